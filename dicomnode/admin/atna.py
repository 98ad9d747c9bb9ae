"""The audit trail sent to a syslog collector as DICOM audit messages.

Each audit row becomes one DICOM audit message (PS3.15 A.5, the IHE ATNA
format: ``AuditMessage`` with its event, active participants, audit source and
participant objects, coded in DCM) inside one RFC 5424 syslog message
(facility authpriv, severity notice, MSGID ``IHE+RFC-3881``), sent over UDP
(RFC 5426) or TCP with octet counting (RFC 6587). A forwarder thread reads
new rows from the job store every ``audit.syslog.poll_seconds`` and keeps the
id of the last row sent in ``<data_dir>/run/atna-sent``: a collector that is
down gets the rows it missed when it is back.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

from dicomnode.config.audit import SyslogConfig
from dicomnode.errors import JobStoreError
from dicomnode.jobs.audit import AuditEvent, AuditRecord
from dicomnode.jobs.ports import AdminStore

LOGGER = logging.getLogger(__name__)

#: authpriv (10) * 8 + notice (5)
PRIORITY = 85
MSGID = "IHE+RFC-3881"
#: How many rows one pass sends at most.
BATCH = 500

_Code = tuple[str, str]  # (code value, meaning), scheme DCM

#: (EventID, EventActionCode, EventTypeCode or None) per audit event.
_EVENTS: dict[AuditEvent, tuple[_Code, str, _Code | None]] = {
    AuditEvent.ASSOCIATION_REFUSED: (
        ("110113", "Security Alert"),
        "E",
        ("110126", "Node Authentication"),
    ),
    AuditEvent.INSTANCES_STORED: (("110104", "DICOM Instances Transferred"), "C", None),
    AuditEvent.RESULTS_WRITTEN: (("110103", "DICOM Instances Accessed"), "C", None),
    AuditEvent.RESULTS_SENT: (("110104", "DICOM Instances Transferred"), "R", None),
    AuditEvent.HL7_SENT: (("110106", "Export"), "R", None),
    AuditEvent.ADMIN_ACTION: (("110100", "Application Activity"), "E", None),
    AuditEvent.CONFIG_RELOAD: (
        ("110113", "Security Alert"),
        "E",
        ("110131", "Software Configuration"),
    ),
    AuditEvent.RETENTION_PURGE: (("110105", "DICOM Study Deleted"), "D", None),
    AuditEvent.LOGIN: (("110114", "User Authentication"), "E", ("110122", "Login")),
}


def _code(parent: ET.Element, tag: str, code: _Code, scheme: str = "DCM") -> None:
    ET.SubElement(
        parent, tag, {"csd-code": code[0], "codeSystemName": scheme, "originalText": code[1]}
    )


def _outcome(outcome: str) -> str:
    """EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure."""
    if outcome == "success":
        return "0"
    if outcome in ("partial", "refused"):
        return "4"
    return "8"


def audit_message(record: AuditRecord, source_id: str) -> str | None:
    """The DICOM audit message of one audit row, or ``None`` for an event
    that has none (an accepted association: its transfers are the events)."""
    entry = record.entry
    mapped = _EVENTS.get(entry.event)
    if mapped is None:
        return None
    event_id, action, event_type = mapped
    root = ET.Element("AuditMessage")
    when = datetime.datetime.fromtimestamp(record.at, tz=datetime.UTC)
    identification = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": when.isoformat(timespec="milliseconds"),
            "EventOutcomeIndicator": _outcome(entry.outcome),
        },
    )
    _code(identification, "EventID", event_id)
    if event_type is not None:
        _code(identification, "EventTypeCode", event_type)
    described = " ".join(part for part in (entry.action, entry.target) if part)
    if entry.outcome != "success":
        error = entry.detail.get("error") or entry.detail.get("reason") or entry.outcome
        described = f"{described}: {error}" if described else str(error)
    if described:
        ET.SubElement(identification, "EventOutcomeDescription").text = described[:500]
    peer = ET.SubElement(
        root,
        "ActiveParticipant",
        {"UserID": entry.actor or "unknown", "UserIsRequestor": "true"},
    )
    if entry.address:
        host = entry.address.rsplit(":", 1)[0] if entry.address.count(":") == 1 else entry.address
        peer.set("NetworkAccessPointID", host)
        peer.set("NetworkAccessPointTypeCode", "2")  # an IP address
    if entry.event == AuditEvent.INSTANCES_STORED:
        _code(peer, "RoleIDCode", ("110153", "Source Role ID"))
    node = ET.SubElement(
        root, "ActiveParticipant", {"UserID": source_id, "UserIsRequestor": "false"}
    )
    if entry.event == AuditEvent.INSTANCES_STORED:
        _code(node, "RoleIDCode", ("110152", "Destination Role ID"))
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    if entry.study_instance_uid:
        study = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": entry.study_instance_uid,
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "3",  # report
            },
        )
        _code(study, "ParticipantObjectIDTypeCode", ("110180", "Study Instance UID"))
        if entry.accession_number:
            ET.SubElement(
                study,
                "ParticipantObjectDetail",
                {"type": "AccessionNumber", "value": entry.accession_number},
            )
    if entry.patient_id:
        patient = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": entry.patient_id,
                "ParticipantObjectTypeCode": "1",  # person
                "ParticipantObjectTypeCodeRole": "1",  # patient
            },
        )
        _code(patient, "ParticipantObjectIDTypeCode", ("2", "Patient Number"), "RFC-3881")
        if entry.patient_name:
            ET.SubElement(patient, "ParticipantObjectName").text = entry.patient_name
    return ET.tostring(root, encoding="unicode")


def syslog_frame(message: str, at: float, hostname: str, app_name: str) -> bytes:
    """One RFC 5424 syslog message carrying ``message`` (UTF-8, with its BOM)."""
    stamp = datetime.datetime.fromtimestamp(at, tz=datetime.UTC).isoformat(timespec="milliseconds")
    header = f"<{PRIORITY}>1 {stamp} {hostname[:255] or '-'} {app_name} {os.getpid()} {MSGID} - "
    return header.encode("ascii", "replace") + b"\xef\xbb\xbf" + message.encode("utf-8")


class SyslogForwarder:
    """Sends new audit rows to ``config``'s collector, from a thread of its own.

    Parameters
    ----------
    store : AdminStore
        The job store whose audit trail is sent.
    config : SyslogConfig
        The collector.
    source_id : str
        The AuditSourceID: the node's AE title.
    state_file : Path
        Where the id of the last row sent is kept.
    """

    def __init__(
        self, store: AdminStore, config: SyslogConfig, source_id: str, state_file: Path
    ) -> None:
        self.store = store
        self.config = config
        self.source_id = source_id
        self.state_file = state_file
        self.hostname = socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def _sent_up_to(self) -> int:
        try:
            return int(self.state_file.read_text(encoding="ascii").strip() or 0)
        except (OSError, ValueError):
            return 0

    def _remember(self, last: int) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(f"{last}\n", encoding="ascii")
        os.replace(temporary, self.state_file)

    def _send(self, frames: list[bytes]) -> None:
        address = (self.config.host, self.config.port)
        if self.config.transport == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for frame in frames:
                    sock.sendto(frame, address)
            return
        with socket.create_connection(address, timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"".join(f"{len(f)} ".encode("ascii") + f for f in frames))

    def forward_once(self) -> int:
        """Send the rows not sent yet (at most :data:`BATCH`); return how many
        rows were passed (sent, or without a message). Nothing is marked sent
        when the collector cannot be reached."""
        last = self._sent_up_to()
        records = self.store.audit_records(after_id=last, oldest_first=True, limit=BATCH)
        if not records:
            return 0
        frames = []
        for record in records:
            message = audit_message(record, self.source_id)
            if message is not None:
                frames.append(syslog_frame(message, record.at, self.hostname, self.config.app_name))
        try:
            if frames:
                self._send(frames)
        except OSError as exc:
            if not self._failing:
                LOGGER.warning(
                    "audit: cannot send to the syslog collector %s:%d (%s); kept for later",
                    self.config.host,
                    self.config.port,
                    exc.strerror or exc,
                )
            self._failing = True
            return 0
        if self._failing:
            LOGGER.info("audit: the syslog collector takes events again")
        self._failing = False
        self._remember(records[-1].id)
        return len(records)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            while self.forward_once() >= BATCH:
                pass

    def start(self) -> None:
        """Send new rows every ``poll_seconds`` until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dicomnode-atna", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop after a last pass."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        try:
            self.forward_once()
        except (JobStoreError, OSError) as exc:  # the rows go at the next start
            LOGGER.warning("audit: last pass to the syslog collector failed: %s", exc)
