"""The audit trail: append-only rows of security- and safety-relevant events.

Patient identifiers (ID, name, accession number) may be written here and
nowhere else: never in a log line. The job store refuses to change or delete a
row once written (SQLite triggers), so the trail can only grow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class AuditEvent(StrEnum):
    """What an audit row records."""

    ASSOCIATION_ACCEPTED = "association-accepted"
    ASSOCIATION_REFUSED = "association-refused"
    INSTANCES_STORED = "instances-stored"
    """One row per study per association: how many instances arrived."""
    RESULTS_WRITTEN = "results-written"
    RESULTS_SENT = "results-sent"
    """Objects sent to a DICOM or folder destination (UIDs, status)."""
    HL7_SENT = "hl7-sent"
    """An ORU^R01 sent to a RIS, with the ACK code it got."""
    ADMIN_ACTION = "admin-action"
    """Something an admin did (retry, replay, hold, release, discard, test, save)."""
    CONFIG_RELOAD = "config-reload"
    RETENTION_PURGE = "retention-purge"
    LOGIN = "login"
    """A console login, successful or failed (outcome ``success`` / ``failure``)."""


@dataclass(frozen=True)
class AuditEntry:
    """One event to append to the audit trail.

    Attributes
    ----------
    event : AuditEvent
        What happened.
    actor : str
        Who did it: an admin's name, a calling AE title, or ``node``.
    action : str
        The verb within the event (``retry``, ``hold``, ``C-STORE``...); may be empty.
    target : str
        What it was done to: a job id, a study UID, a destination; may be empty.
    outcome : str
        ``success``, ``failure``, ``refused``...
    study_instance_uid : str or None
        The study it concerns, when one.
    patient_id, patient_name, accession_number : str or None
        Identifiers of the patient and order, kept here only.
    address : str or None
        The peer's network address, when a peer was involved.
    detail : dict
        Anything else, JSON-serialisable (UIDs, status codes, before/after).
    """

    event: AuditEvent
    actor: str
    action: str = ""
    target: str = ""
    outcome: str = "success"
    study_instance_uid: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    address: str | None = None
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    """An audit row as stored: its entry, number and time."""

    id: int
    at: float
    entry: AuditEntry
