"""The durable job store: states, legal transitions, timestamps."""

from dicomnode.jobs.audit import AuditEntry, AuditEvent, AuditRecord
from dicomnode.jobs.models import (
    InstanceRecord,
    Job,
    JobRecord,
    OutboxItem,
    PurgePlan,
    RecordOutcome,
    Run,
    RunSpec,
    Study,
    StudyRound,
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
    "JobRecord",
    "JobState",
    "JobStore",
    "OutboxItem",
    "PurgePlan",
    "RecordOutcome",
    "Run",
    "RunSpec",
    "SQLJobStore",
    "SQLiteJobStore",
    "Study",
    "StudyRound",
    "Transition",
    "check_discard",
    "check_hold",
    "check_transition",
]
