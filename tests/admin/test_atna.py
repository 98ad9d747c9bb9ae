"""The audit trail sent to a syslog collector as DICOM audit messages (ATNA)."""

from __future__ import annotations

import socket
import socketserver
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

from dicomnode.admin.atna import SyslogForwarder
from dicomnode.config.audit import SyslogConfig
from dicomnode.jobs import AuditEntry, AuditEvent, SQLiteJobStore
from tests.helpers import echo

STUDY = "1.2.826.0.1.3680043.99.1"


def _events(store: SQLiteJobStore) -> None:
    store.record_audits(
        [
            AuditEntry(AuditEvent.ASSOCIATION_ACCEPTED, "SCANNER", address="127.0.0.1:5000"),
            AuditEntry(
                AuditEvent.INSTANCES_STORED,
                "SCANNER",
                action="C-STORE",
                target=STUDY,
                study_instance_uid=STUDY,
                patient_id="PID-9",
                patient_name="DOE^JANE",
                accession_number="ACC-9",
                address="127.0.0.1:5000",
                detail={"instances": 3, "series": 1},
            ),
            AuditEntry(
                AuditEvent.LOGIN, "bob", "login", "console", "failure", detail={"reason": "bad"}
            ),
        ]
    )


def _message(frame: bytes) -> ET.Element:
    header, _, body = frame.partition(b"\xef\xbb\xbf")
    assert header.startswith(b"<85>1 ") and b" dicomnode " in header
    assert b" IHE+RFC-3881 - " in header
    return ET.fromstring(body.decode("utf-8"))


def test_udp_collector_gets_one_dicom_audit_message_per_event(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    _events(store)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        config = SyslogConfig(host="127.0.0.1", port=collector.getsockname()[1])
        forwarder = SyslogForwarder(store, config, "DICOMNODE", tmp_path / "run" / "atna-sent")
        assert forwarder.forward_once() == 3  # the accepted association has no message
        stored, login = (_message(collector.recv(65536)) for _ in range(2))
        assert forwarder.forward_once() == 0  # nothing new: nothing sent again
        store.record_audit(AuditEntry(AuditEvent.ADMIN_ACTION, "alice", "hold", "job 1"))
        assert forwarder.forward_once() == 1
        held = _message(collector.recv(65536))

    event = stored.find("EventIdentification")
    assert event is not None and event.get("EventActionCode") == "C"
    assert event.get("EventOutcomeIndicator") == "0"
    assert stored.find("EventIdentification/EventID").get("csd-code") == "110104"
    users = [p.get("UserID") for p in stored.findall("ActiveParticipant")]
    assert users == ["SCANNER", "DICOMNODE"]
    objects = {
        o.get("ParticipantObjectID"): o for o in stored.findall("ParticipantObjectIdentification")
    }
    assert set(objects) == {STUDY, "PID-9"}
    assert objects["PID-9"].findtext("ParticipantObjectName") == "DOE^JANE"
    assert stored.find("AuditSourceIdentification").get("AuditSourceID") == "DICOMNODE"

    assert login.find("EventIdentification/EventTypeCode").get("csd-code") == "110122"
    assert login.find("EventIdentification").get("EventOutcomeIndicator") == "8"
    assert "bad" in (login.findtext("EventIdentification/EventOutcomeDescription") or "")
    assert held.findtext("EventIdentification/EventOutcomeDescription") == "hold job 1"


class _Frames(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        data = self.rfile.read()
        server: _Server = self.server
        while data:
            length, _, rest = data.partition(b" ")
            server.frames.append(rest[: int(length)])
            data = rest[int(length) :]
        server.got.set()


class _Server(socketserver.TCPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Frames)
        self.frames: list[bytes] = []
        self.got = threading.Event()


def test_tcp_collector_that_was_down_gets_what_it_missed(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    _events(store)
    with _Server() as server:
        port = server.server_address[1]
        server.server_close()  # down
        config = SyslogConfig(host="127.0.0.1", port=port, transport="tcp")
        forwarder = SyslogForwarder(store, config, "DICOMNODE", tmp_path / "run" / "atna-sent")
        assert forwarder.forward_once() == 0
    with _Server() as server:  # back, on another port
        config = SyslogConfig(host="127.0.0.1", port=server.server_address[1], transport="tcp")
        forwarder = SyslogForwarder(store, config, "DICOMNODE", tmp_path / "run" / "atna-sent")
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        assert forwarder.forward_once() == 3
        thread.join(10)
        assert server.got.is_set()
    assert [
        _message(f).find("EventIdentification/EventID").get("csd-code") for f in server.frames
    ] == [
        "110104",
        "110114",
    ]


def test_the_running_node_sends_a_refused_association(make_settings, start_node) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(30)
        settings = make_settings(
            audit={
                "syslog": {
                    "host": "127.0.0.1",
                    "port": collector.getsockname()[1],
                    "poll_seconds": 0.1,
                }
            }
        )
        start_node(settings)
        assert not echo(settings.node.port, calling="INTRUDER")
        alert = _message(collector.recv(65536))
    assert alert.find("EventIdentification/EventID").get("csd-code") == "110113"
    assert alert.find("EventIdentification/EventTypeCode").get("csd-code") == "110126"
    (peer, _) = alert.findall("ActiveParticipant")
    assert (peer.get("UserID"), peer.get("NetworkAccessPointID")) == ("INTRUDER", "127.0.0.1")
