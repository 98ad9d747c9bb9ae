"""The durable job store: states, legal transitions, timestamps."""

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
from dicomnode.jobs.sqlite import SQLiteJobStore
from dicomnode.jobs.states import TRANSITIONS, JobState, check_transition
from dicomnode.jobs.store import JobStore

__all__ = [
    "TRANSITIONS",
    "InstanceRecord",
    "Job",
    "JobState",
    "JobStore",
    "OutboxItem",
    "PurgePlan",
    "RecordOutcome",
    "RunSpec",
    "SQLiteJobStore",
    "Study",
    "Transition",
    "check_transition",
]
