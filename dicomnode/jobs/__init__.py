"""The durable job store: states, legal transitions, timestamps."""

from dicomnode.jobs.audit import AuditEntry, AuditEvent, AuditRecord
from dicomnode.jobs.models import (
    InstanceRecord,
    Job,
    OutboxItem,
    PurgePlan,
    RecordOutcome,
    RunSpec,
    Study,
    Transition,
)
from dicomnode.jobs.sqlstore import SQLiteJobStore, SQLJobStore
from dicomnode.jobs.states import (
    HOLDABLE,
    TRANSITIONS,
    JobState,
    check_discard,
    check_hold,
    check_transition,
)
from dicomnode.jobs.store import JobStore

__all__ = [
    "HOLDABLE",
    "TRANSITIONS",
    "AuditEntry",
    "AuditEvent",
    "AuditRecord",
    "InstanceRecord",
    "Job",
    "JobState",
    "JobStore",
    "OutboxItem",
    "PurgePlan",
    "RecordOutcome",
    "RunSpec",
    "SQLJobStore",
    "SQLiteJobStore",
    "Study",
    "Transition",
    "check_discard",
    "check_hold",
    "check_transition",
]
