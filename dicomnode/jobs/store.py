"""The job store interface every backend implements."""

from __future__ import annotations

from typing import Protocol

from dicomnode.jobs.models import InstanceRecord, Job, RecordOutcome, Study, Transition
from dicomnode.jobs.states import JobState


class JobStore(Protocol):
    """Durable state shared by all stages; they meet here, never call each other."""

    def record_instance(self, record: InstanceRecord) -> RecordOutcome:
        """Record a received instance in its study's open assembly round.

        Opens a new round when the study has none open. A SOP Instance UID
        already recorded only counts a duplicate.
        """
        ...

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether an instance is recorded."""
        ...

    def complete_due(self, now: float, quiet_seconds: float, max_wait_seconds: float) -> list[int]:
        """Move every RECEIVED round whose quiet period or maximum wait ran out
        to COMPLETE, each exactly once; return their job ids."""
        ...

    def next_due(self, quiet_seconds: float, max_wait_seconds: float) -> float | None:
        """The earliest time an open round becomes due, or ``None``."""
        ...

    def transition(
        self,
        job_id: int,
        target: JobState,
        reason: str | None = None,
        *,
        expected: JobState | None = None,
    ) -> Job:
        """Move a job to ``target``, recording the timestamped transition."""
        ...

    def get_job(self, job_id: int) -> Job:
        """One job by id."""
        ...

    def jobs(
        self, *, study_instance_uid: str | None = None, state: JobState | None = None
    ) -> list[Job]:
        """Jobs, newest first, optionally filtered."""
        ...

    def history(self, job_id: int) -> list[Transition]:
        """Every transition of a job, oldest first."""
        ...

    def studies(self) -> list[Study]:
        """Every study, most recently received first."""
        ...

    def instances(self, study_instance_uid: str) -> list[InstanceRecord]:
        """The instances of one study."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
