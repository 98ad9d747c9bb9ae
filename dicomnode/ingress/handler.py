"""The C-ECHO and C-STORE handlers: save what arrived, then answer.

A C-STORE is answered Success only after the instance is fsynced into the
spool and recorded in the job store. Failures map to DIMSE status here, at the
protocol boundary, and nowhere else.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.errors import IncompleteDatasetError, InvalidUIDError, JobStoreError, SpoolWriteError
from dicomnode.ingress.integrity import check_complete_file
from dicomnode.ingress.sameness import same_content
from dicomnode.jobs.audit import AuditEntry, AuditEvent
from dicomnode.jobs.models import InstanceRecord
from dicomnode.jobs.ports import IngressStore
from dicomnode.logs import escape
from dicomnode.spool import Spool, validate_uid

LOGGER = logging.getLogger(__name__)

#: DIMSE statuses the node answers a C-STORE with.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
#: Warning, Elements Discarded: a re-sent SOP Instance UID whose content differs
#: from the copy kept; the node keeps its first copy and discards this one.
CONFLICTING_DUPLICATE = 0xB006
#: in the "cannot understand" range; 0xC211 is pynetdicom's own for a failing handler
INVALID_UID = 0xC220
#: The elements read from a received file before it is saved.
_HEADER_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    # for the audit trail only: never logged
    "PatientID",
    "PatientName",
    "AccessionNumber",
]


def _identifier(ds: Dataset, keyword: str) -> str | None:
    """A patient or order identifier as received (for the audit trail only)."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - an unparsable value is simply not recorded
        return None
    text = "" if value is None else str(value).strip()
    return text[:256] or None


@dataclass
class _StudyTally:
    """What one association stored of one study (one audit row)."""

    instances: int = 0
    series: set[str] = field(default_factory=set)
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None


@dataclass
class _AssociationTally:
    calling_ae: str
    address: str
    studies: dict[str, _StudyTally] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceUIDs:
    """The identifying UIDs of a dataset, validated."""

    study: str
    series: str
    sop: str
    sop_class: str
    modality: str


def instance_uids(ds: Dataset) -> InstanceUIDs:
    """Read and validate the UIDs the spool and the job store need.

    Raises
    ------
    InvalidUIDError
        A UID is missing or malformed (the message names it).
    """
    modality = ds.get("Modality", "") or ""
    return InstanceUIDs(
        study=validate_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
        series=validate_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        sop=validate_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID"),
        sop_class=validate_uid(ds.get("SOPClassUID"), "SOPClassUID"),
        modality=str(modality)[:16],
    )


class StoreHandler:
    """Event handlers bound to the listener.

    Parameters
    ----------
    spool : Spool
        Where instances are written.
    store : IngressStore
        Where they are recorded.
    """

    def __init__(self, spool: Spool, store: IngressStore) -> None:
        self.spool = spool
        self.store = store
        self._tallies: dict[int, _AssociationTally] = {}
        self._tally_lock = threading.Lock()

    # -- audit trail ---------------------------------------------------------

    def _audit(self, entries: list[AuditEntry]) -> None:
        try:
            self.store.record_audits(entries)
        except JobStoreError as exc:
            LOGGER.error("could not write %d audit row(s): %s", len(entries), exc)

    def association_accepted(self, assoc: Any) -> None:
        """Record an accepted association in the audit trail."""
        calling_ae = str(assoc.requestor.ae_title).strip()
        address = f"{assoc.requestor.address}:{assoc.requestor.port}"
        with self._tally_lock:
            self._tallies[id(assoc)] = _AssociationTally(calling_ae, address)
        self._audit(
            [
                AuditEntry(
                    AuditEvent.ASSOCIATION_ACCEPTED,
                    calling_ae,
                    action="A-ASSOCIATE",
                    target=str(assoc.requestor.primitive.called_ae_title).strip(),
                    address=address,
                )
            ]
        )

    def association_refused(self, calling_ae: str, called_ae: str, address: str, why: str) -> None:
        """Record a refused association in the audit trail."""
        self._audit(
            [
                AuditEntry(
                    AuditEvent.ASSOCIATION_REFUSED,
                    calling_ae,
                    action="A-ASSOCIATE",
                    target=called_ae,
                    outcome="refused",
                    address=address,
                    detail={"reason": why},
                )
            ]
        )

    def _count(self, assoc: Any, uids: InstanceUIDs, ds: Dataset) -> None:
        with self._tally_lock:
            tally = self._tallies.get(id(assoc))
            if tally is None:  # established before this handler saw it
                tally = self._tallies[id(assoc)] = _AssociationTally(
                    str(assoc.requestor.ae_title).strip(),
                    f"{assoc.requestor.address}:{assoc.requestor.port}",
                )
            study = tally.studies.get(uids.study)
            if study is None:
                study = tally.studies[uids.study] = _StudyTally(
                    patient_id=_identifier(ds, "PatientID"),
                    patient_name=_identifier(ds, "PatientName"),
                    accession_number=_identifier(ds, "AccessionNumber"),
                )
            study.instances += 1
            study.series.add(uids.series)

    def association_ended(self, assoc: Any) -> None:
        """Record what the association stored: one row per study (called
        when it is released, aborted or its connection closes; once)."""
        with self._tally_lock:
            tally = self._tallies.pop(id(assoc), None)
        if tally is None or not tally.studies:
            return
        self._audit(
            [
                AuditEntry(
                    AuditEvent.INSTANCES_STORED,
                    tally.calling_ae,
                    action="C-STORE",
                    target=study_uid,
                    study_instance_uid=study_uid,
                    patient_id=study.patient_id,
                    patient_name=study.patient_name,
                    accession_number=study.accession_number,
                    address=tally.address,
                    detail={"instances": study.instances, "series": len(study.series)},
                )
                for study_uid, study in tally.studies.items()
            ]
        )

    def save(
        self, data: bytes | Path, uids: InstanceUIDs, transfer_syntax: str, calling_ae: str
    ) -> int:
        """Store one encoded instance durably and record it; return a DIMSE status.

        Parameters
        ----------
        data : bytes or Path
            The encoded file (preamble, meta, dataset) exactly as received, or
            the file holding it.
        uids : InstanceUIDs
            The validated UIDs of the dataset.
        transfer_syntax : str
            The transfer syntax it arrived in.
        calling_ae : str
            The sender's AE title.
        """
        try:
            if isinstance(data, Path):
                stored = self.spool.store_file(uids.study, uids.series, uids.sop, data)
            else:
                stored = self.spool.store(uids.study, uids.series, uids.sop, data)
        except SpoolWriteError as exc:
            LOGGER.error("refused an instance of study %s: %s", uids.study, exc)
            return OUT_OF_RESOURCES
        record = InstanceRecord(
            sop_instance_uid=uids.sop,
            series_instance_uid=uids.series,
            study_instance_uid=uids.study,
            sop_class_uid=uids.sop_class,
            transfer_syntax_uid=transfer_syntax,
            modality=uids.modality,
            path=str(stored.path),
            size=stored.size,
            calling_ae=calling_ae,
            received_at=time.time(),
        )
        try:
            outcome = self.store.record_instance(record)
        except JobStoreError as exc:
            # The file stays in the spool; start-up recovery records it.
            LOGGER.error("could not record an instance of study %s: %s", uids.study, exc)
            return OUT_OF_RESOURCES
        if outcome.duplicate:
            if not stored.existed and outcome.kept_path != str(stored.path):
                self.spool.remove(stored.path)
            return self._duplicate(data, uids, outcome.kept_path, outcome.job_id, calling_ae)
        elif outcome.new_round:
            LOGGER.info(
                "study %s: assembly round opened (job %d)",
                uids.study,
                outcome.job_id,
                extra={"study_uid": uids.study, "job_id": outcome.job_id},
            )
        return SUCCESS

    def _duplicate(
        self, data: bytes | Path, uids: InstanceUIDs, kept_path: str, job_id: int, calling_ae: str
    ) -> int:
        """Answer a SOP Instance UID already recorded: Success when it is the
        same instance again, :data:`CONFLICTING_DUPLICATE` (and one WARNING
        line, and the study's conflict count) when its content differs. The
        first copy is kept either way."""
        extra = {"study_uid": uids.study, "job_id": job_id}
        try:
            same = same_content(Path(kept_path), data)
        except OSError as exc:
            LOGGER.warning(
                "duplicate SOP Instance UID %s in study %s: first copy kept, not compared (%s)",
                uids.sop,
                uids.study,
                exc.strerror,
                extra=extra,
            )
            return SUCCESS
        if same:
            LOGGER.info(
                "duplicate SOP Instance UID in study %s: first copy kept", uids.study, extra=extra
            )
            return SUCCESS
        try:
            self.store.record_conflict(uids.sop)
        except JobStoreError as exc:
            LOGGER.error("could not count a conflicting duplicate in study %s: %s", uids.study, exc)
        LOGGER.warning(
            "SOP Instance UID %s of study %s sent again by %s with different content: "
            "the first copy is kept, this one discarded (status 0x%04X)",
            uids.sop,
            uids.study,
            calling_ae,
            CONFLICTING_DUPLICATE,
            extra=extra,
        )
        return CONFLICTING_DUPLICATE

    # -- pynetdicom event handlers --------------------------------------

    def on_c_store(self, event: Any) -> int:
        """``evt.EVT_C_STORE``: check the dataset is whole, decode only the
        header UIDs, save, answer. A refused instance is one log line, its
        values from the wire escaped.

        The dataset arrives in a file (pynetdicom's chunked receive), never
        whole in memory: the completeness walk maps it, only the elements
        before Pixel Data are read, and the file itself is linked or copied
        into the spool.
        """
        calling_ae = escape(str(event.assoc.requestor.ae_title).strip())
        path = Path(event.dataset_path)
        try:
            transfer_syntax = str(event.context.transfer_syntax)
            check_complete_file(path, transfer_syntax)
        except IncompleteDatasetError as exc:
            LOGGER.warning("refused an incomplete dataset from %s: %s", calling_ae, exc)
            return CANNOT_UNDERSTAND
        except OSError as exc:  # the node's own file of the received dataset
            LOGGER.error("could not read a dataset received from %s: %s", calling_ae, exc.strerror)
            return OUT_OF_RESOURCES
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the sender's data
            LOGGER.warning(
                "refused an undecodable dataset from %s: %s", calling_ae, escape(exc, 256)
            )
            return CANNOT_UNDERSTAND
        try:
            uids = instance_uids(ds)
        except InvalidUIDError as exc:
            LOGGER.warning("refused an instance from %s: %s", calling_ae, escape(exc, 256))
            return INVALID_UID
        except Exception as exc:  # noqa: BLE001 - an element pydicom cannot parse
            LOGGER.warning(
                "refused an undecodable dataset from %s: %s", calling_ae, escape(exc, 256)
            )
            return CANNOT_UNDERSTAND
        request = event.request
        command_sop = str(request.AffectedSOPInstanceUID).rstrip("\x00 ")
        command_class = str(request.AffectedSOPClassUID).rstrip("\x00 ")
        if uids.sop != command_sop or uids.sop_class != command_class:
            LOGGER.warning(
                "refused an instance from %s: the command's UIDs (class %s, instance %s) "
                "differ from the dataset's (class %s, instance %s)",
                calling_ae,
                escape(command_class, 64),
                escape(command_sop, 80),
                uids.sop_class,
                uids.sop,
            )
            return DATASET_DOES_NOT_MATCH
        status = self.save(path, uids, transfer_syntax, calling_ae)
        if status == SUCCESS or status == CONFLICTING_DUPLICATE:
            self._count(event.assoc, uids, ds)
        return status

    def on_c_echo(self, event: Any) -> int:
        """``evt.EVT_C_ECHO``: always Success (the association works). When the
        spool's disk is below its floor, a WARNING line says that stores are
        refused, for whoever tests the connection."""
        if self.spool.below_floor():
            LOGGER.warning(
                "C-ECHO from %s answered, but the spool disk has %d MiB free, below the "
                "floor of %d MiB: every C-STORE is refused with 0xA700",
                escape(str(event.assoc.requestor.ae_title).strip()),
                self.spool.free_bytes() // (1024 * 1024),
                self.spool.min_free_bytes // (1024 * 1024),
            )
        return SUCCESS
