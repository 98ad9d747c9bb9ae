"""The job store interface every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dicomnode.jobs.audit import AuditEntry
from dicomnode.jobs.models import (
    InstanceRecord,
    Job,
    PurgePlan,
    RecordOutcome,
    RunSpec,
    Study,
    Transition,
)
from dicomnode.jobs.states import JobState
from dicomnode.protocol import ResultMessage, ResultObject


class JobStore(Protocol):
    """Durable state shared by all stages; they meet here, never call each other."""

    def record_instance(self, record: InstanceRecord) -> RecordOutcome:
        """Record a received instance in its study's open assembly round.

        Opens a new round when the study has none open. A SOP Instance UID
        already recorded only counts a duplicate.
        """
        ...

    def record_conflict(self, sop_instance_uid: str) -> None:
        """Count a duplicate of a recorded instance whose content differed from
        the copy kept (the first copy stays)."""
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

    def open_rounds(self) -> list[Job]:
        """Study rounds still RECEIVED, oldest first."""
        ...

    def complete_round(
        self, job_id: int, now: float, quiet_seconds: float, max_wait_seconds: float
    ) -> bool:
        """Complete one round if it is still RECEIVED and due; return whether it was."""
        ...

    def instances_of(self, job_id: int) -> list[InstanceRecord]:
        """The instances recorded in one study round."""
        ...

    def route(self, job_id: int, runs: list[RunSpec], reason: str) -> list[int]:
        """COMPLETE → ROUTED with one run job per spec, or → DISCARDED."""
        ...

    def claim_runs(self, now: float, limit: int) -> list[Job]:
        """Move due runs to RUNNING and return them."""
        ...

    def finish_run(
        self,
        job_id: int,
        result_dir: str,
        summary: str,
        objects: Sequence[ResultObject] = (),
        messages: Sequence[ResultMessage] = (),
        *,
        claimant: str | None = None,
    ) -> Job:
        """RUNNING → RESULTS_WRITTEN with its outbox rows (→ DONE with nowhere to
        deliver), from the run's holder only (a second completion is refused)."""
        ...

    def notified_before(self, job_id: int) -> set[str]:
        """The run's notify destinations that already got a result of the same
        study, series and pipeline."""
        ...

    def fail_run(
        self,
        job_id: int,
        reason: str,
        traceback: str | None,
        retry_at: float | None,
        *,
        claimant: str | None = None,
        expired_at: float | None = None,
    ) -> Job:
        """RUNNING → FAILED_RETRYABLE (``retry_at``) or DEAD (``None``), from the
        run's holder only (or, with ``expired_at``, once its lease ran out)."""
        ...

    def runs_to_queue(self, now: float, requeue_after: float, limit: int) -> list[Job]:
        """Due runs not sent to their queue yet (or sent long ago, unclaimed)."""
        ...

    def mark_queued(self, job_id: int, now: float) -> None:
        """Record that the run was sent to its queue."""
        ...

    def claim_run(self, job_id: int, claimant: str, now: float, lease_seconds: float) -> Job | None:
        """A worker's leased claim of one due run, or ``None`` when it is not due."""
        ...

    def renew_lease(self, job_id: int, claimant: str, until: float) -> bool:
        """Extend a held lease; ``False`` when the claimant lost the run."""
        ...

    def expired_leases(self, now: float) -> list[Job]:
        """RUNNING runs whose lease ran out."""
        ...

    def requeue_orphans(self, reason: str) -> list[int]:
        """Runs left RUNNING by a stopped node become FAILED_RETRYABLE."""
        ...

    def replay(self, job_id: int, *, only_failed: bool = False) -> Job:
        """A DONE or DEAD run's deliveries back to PENDING, the run to RESULTS_WRITTEN."""
        ...

    def retry(self, job_id: int) -> Job:
        """A DEAD or FAILED_RETRYABLE run back to ROUTED, attempts reset."""
        ...

    def expired_studies(self, cutoff: float) -> list[str]:
        """Studies whose jobs are all DONE, DISCARDED or DEAD (rounds: or
        ROUTED), with no delivery pending and no activity since ``cutoff``,
        oldest first."""
        ...

    def purge_plan(self, study_instance_uid: str, cutoff: float) -> PurgePlan | None:
        """The files and folders retention removes of one expired study."""
        ...

    def mark_purged(self, plan: PurgePlan, now: float) -> int | None:
        """Delete the plan's instance rows and mark its jobs purged, if they did
        not move meanwhile; return the rows deleted, or ``None``."""
        ...

    def record_audits(self, entries: Sequence[AuditEntry]) -> None:
        """Append events to the audit trail, in one transaction."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
