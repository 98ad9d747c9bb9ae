"""The job store's ports: for each stage, exactly the store verbs it uses.

A stage depends on its port, never on an engine, so a second engine drops in
without the stages noticing. :class:`dicomnode.jobs.store.JobStore` is every
port at once; each engine (today :class:`dicomnode.jobs.sqlstore.SQLJobStore`)
implements it, and mypy checks that it does (see ``dicomnode/jobs/store.py``).

The small bases at the top hold the verbs several stages share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dicomnode.jobs.audit import AuditEntry, AuditRecord
from dicomnode.jobs.models import (
    InstanceRecord,
    Job,
    OutboxItem,
    PurgePlan,
    RecordOutcome,
    Run,
    RunSpec,
    Study,
    StudyRound,
    Transition,
)
from dicomnode.jobs.states import JobState
from dicomnode.protocol import ResultMessage, ResultObject

__all__ = [
    "AdminStore",
    "AssemblyStore",
    "AuditWriter",
    "CorrectionReader",
    "CorrectionSource",
    "DescriptorSource",
    "ExportStore",
    "IngressStore",
    "InputReader",
    "JobLister",
    "JobReader",
    "OpenRounds",
    "OutboxReader",
    "RetentionStore",
    "RoutingStore",
    "RunReader",
    "RunnerStore",
    "ShadowSource",
]


# -- shared verbs ---------------------------------------------------------------


class JobReader(Protocol):
    """Reading one job by id."""

    def get_job(self, job_id: int) -> Job:
        """One job by id."""
        ...


class RunReader(Protocol):
    """Reading one pipeline run by id."""

    def get_run(self, job_id: int) -> Run:
        """One run by id (a study round's id is not found)."""
        ...


class JobLister(Protocol):
    """Listing jobs."""

    def jobs(
        self, *, study_instance_uid: str | None = None, state: JobState | None = None
    ) -> list[Job]:
        """Jobs, newest first, optionally filtered."""
        ...


class OpenRounds(Protocol):
    """Listing the study rounds still receiving."""

    def open_rounds(self) -> list[StudyRound]:
        """Study rounds still RECEIVED, oldest first."""
        ...


class InputReader(Protocol):
    """Reading the instances of a study round (a run's input)."""

    def instances_of(self, job_id: int) -> list[InstanceRecord]:
        """The instances recorded in one study round."""
        ...


class OutboxReader(Protocol):
    """Reading a run's deliveries."""

    def outbox(self, job_id: int) -> list[OutboxItem]:
        """The delivery rows of one run."""
        ...


class AuditWriter(Protocol):
    """Appending one event to the audit trail."""

    def record_audit(self, entry: AuditEntry) -> int:
        """Append one event to the audit trail; return its row id."""
        ...


class CorrectionReader(Protocol):
    """Reading the recorded corrections of the node's segmentations."""

    def corrections(self, *, pending: bool = False) -> list[dict[str, object]]:
        """Recorded corrections, oldest first (only PENDING ones with ``pending``)."""
        ...


# -- the stages -----------------------------------------------------------------


class IngressStore(Protocol):
    """The store verbs ingress uses: recording received instances (and the
    spool recovery at start-up)."""

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

    def record_audits(self, entries: Sequence[AuditEntry]) -> None:
        """Append events to the audit trail, in one transaction."""
        ...


class AssemblyStore(JobReader, OpenRounds, Protocol):
    """The store verbs assembly uses: completing study rounds on time."""

    def complete_due(self, now: float, quiet_seconds: float, max_wait_seconds: float) -> list[int]:
        """Move every RECEIVED round whose quiet period or maximum wait ran out
        to COMPLETE, each exactly once; return their job ids."""
        ...

    def next_due(self, quiet_seconds: float, max_wait_seconds: float) -> float | None:
        """The earliest time an open round becomes due, or ``None``."""
        ...

    def complete_round(
        self, job_id: int, now: float, quiet_seconds: float, max_wait_seconds: float
    ) -> bool:
        """Complete one round if it is still RECEIVED and due; return whether it was."""
        ...


class RoutingStore(JobLister, InputReader, Protocol):
    """The store verbs routing uses: routing complete rounds to runs, and
    recording received corrections of the node's segmentations."""

    def route(self, job_id: int, runs: list[RunSpec], reason: str) -> list[int]:
        """COMPLETE → ROUTED with one run job per spec, or → DISCARDED."""
        ...

    def written_segmentations(
        self, sop_instance_uids: Sequence[str], series_instance_uids: Sequence[str]
    ) -> list[dict[str, object]]:
        """SEGs the node wrote (its outbox) with one of these SOP Instance UIDs
        or in one of these series, newest run first."""
        ...

    def record_correction(
        self,
        *,
        sop_instance_uid: str,
        series_instance_uid: str,
        study_instance_uid: str,
        path: str,
        round_job_id: int,
        job_id: int,
        pipeline: str,
        seg_sop_instance_uid: str,
        seg_path: str,
        matched_by: str,
    ) -> bool:
        """Record a received SEG that corrects one the node wrote (PENDING
        scoring); return whether it was new."""
        ...


class RunnerStore(JobReader, RunReader, InputReader, OpenRounds, Protocol):
    """The store verbs the runner uses: claiming runs (here, or through a
    queue by leased workers) and recording their outcomes."""

    def claim_runs(self, now: float, limit: int, claimant: str | None = None) -> list[Run]:
        """Move due runs to RUNNING (recording ``claimant``) and return them."""
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
    ) -> Run:
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
    ) -> Run:
        """RUNNING → FAILED_RETRYABLE (``retry_at``) or DEAD (``None``), from the
        run's holder only (or, with ``expired_at``, once its lease ran out)."""
        ...

    def record_descriptors(self, job_id: int, pipeline: str, document: str) -> None:
        """Keep a run's descriptors (a JSON document) for drift checks, stamped
        with the current time."""
        ...

    def runs_to_queue(self, now: float, requeue_after: float, limit: int) -> list[Run]:
        """Due runs not sent to their queue yet (or sent long ago, unclaimed)."""
        ...

    def mark_queued(self, job_id: int, now: float) -> None:
        """Record that the run was sent to its queue."""
        ...

    def claim_run(self, job_id: int, claimant: str, now: float, lease_seconds: float) -> Run | None:
        """A worker's leased claim of one due run, or ``None`` when it is not due."""
        ...

    def renew_lease(self, job_id: int, claimant: str, until: float) -> bool:
        """Extend a held lease; ``False`` when the claimant lost the run."""
        ...

    def expired_leases(self, now: float) -> list[Run]:
        """RUNNING runs whose lease ran out."""
        ...

    def requeue_orphans(self, reason: str, claimant: str | None = None) -> list[int]:
        """Runs a stopped node (``claimant``) left RUNNING become FAILED_RETRYABLE."""
        ...


class ExportStore(JobReader, RunReader, InputReader, OutboxReader, AuditWriter, Protocol):
    """The store verbs export uses: delivering the runs' outboxes."""

    def start_exports(self) -> list[int]:
        """Move every RESULTS_WRITTEN run to EXPORTING; return their ids."""
        ...

    def due_deliveries(self, now: float) -> list[OutboxItem]:
        """PENDING outbox rows of EXPORTING runs that are due now."""
        ...

    def record_delivery(
        self,
        item_ids: list[int],
        state: str,
        error: str | None = None,
        next_attempt_at: float | None = None,
        *,
        attempted: bool = True,
    ) -> None:
        """Record one attempt of a group of deliveries: DELIVERED, PENDING
        (retry at ``next_attempt_at``) or DEAD; ``attempted`` false when
        nothing was sent."""
        ...

    def settle_exports(self) -> list[Run]:
        """EXPORTING runs with nothing PENDING: all DELIVERED → DONE, else → DEAD
        with the first delivery error. Return the runs that moved."""
        ...

    def hold(self, job_id: int, reason: str) -> Run:
        """Stop an EXPORTING run from being delivered (→ DEAD, rows DEAD)."""
        ...


class RetentionStore(Protocol):
    """The store verbs retention uses: purging expired studies."""

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


# -- monitoring -----------------------------------------------------------------


class DescriptorSource(Protocol):
    """The store verbs a drift check uses."""

    def descriptor_pipelines(self) -> list[str]:
        """The pipelines that have recorded descriptors, by name."""
        ...

    def descriptors(
        self,
        pipeline: str,
        *,
        first: int | None = None,
        last: int | None = None,
        since: float | None = None,
        until: float | None = None,
        after_id: int = 0,
    ) -> list[tuple[int, int, float, str]]:
        """Recorded descriptors of ``pipeline``, oldest first."""
        ...


class ShadowSource(Protocol):
    """The store verbs shadow comparison uses."""

    def shadow_pairs(self) -> list[tuple[Run, Run]]:
        """Shadow runs with results whose agreement is not recorded yet, each
        with its production run once that has results too, oldest first."""
        ...

    def record_agreement(self, production: Run, shadow: Run, document: str) -> None:
        """Keep the agreement of a shadow run with its production run (JSON);
        a second record for the same shadow run is ignored."""
        ...


class CorrectionSource(CorrectionReader, Protocol):
    """The store verbs correction scoring uses."""

    def score_correction(
        self, correction_id: int, state: str, scores: str | None, reason: str | None
    ) -> None:
        """Record a correction's scores (``SCORED``) or why it has none (``FAILED``)."""
        ...


# -- the admin layer (and the console over it) --------------------------------------


class AdminStore(
    JobReader,
    RunReader,
    JobLister,
    InputReader,
    OutboxReader,
    AuditWriter,
    CorrectionReader,
    DescriptorSource,
    Protocol,
):
    """The store verbs the admin layer uses, the console's through it: reading
    jobs and studies, acting on jobs by hand, the monitoring records, and the
    audit trail (and its syslog forwarding)."""

    def history(self, job_id: int) -> list[Transition]:
        """Every transition of a job, oldest first."""
        ...

    def studies(self) -> list[Study]:
        """Every study, most recently received first."""
        ...

    def state_counts(self) -> dict[tuple[str, str], int]:
        """How many jobs are in each state, by kind (``study`` or ``run``)."""
        ...

    def replay(self, job_id: int, *, only_failed: bool = False) -> Run:
        """A DONE or DEAD run's deliveries back to PENDING, the run to RESULTS_WRITTEN."""
        ...

    def retry(self, job_id: int) -> Run:
        """A DEAD or FAILED_RETRYABLE run back to ROUTED, attempts reset."""
        ...

    def hold_job(self, job_id: int, actor: str) -> Job:
        """Hold a job: it is not routed, run or delivered until released."""
        ...

    def release_job(self, job_id: int) -> Job:
        """Release a held job: the stages take it up again where it stood."""
        ...

    def discard_job(self, job_id: int, reason: str) -> Job:
        """Give up a DEAD or held job for good: → DISCARDED, its undelivered
        outbox rows DEAD with ``reason`` (retention later purges it)."""
        ...

    def agreements(self, rule: str | None = None) -> list[dict[str, object]]:
        """Recorded agreements (oldest first), each a dict of the row's columns."""
        ...

    def record_promotion(
        self,
        rule: str,
        from_pipeline: str,
        to_pipeline: str,
        config_path: str,
        backup_path: str,
        by_user: str,
        agreement: str,
    ) -> int:
        """Record that ``rule``'s candidate was promoted; return the row id."""
        ...

    def promotions(self) -> list[dict[str, object]]:
        """Every recorded promotion, oldest first (dicts of the row's columns)."""
        ...

    def audit_records(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        after_id: int | None = None,
        event: str | None = None,
        actor: str | None = None,
        study_instance_uid: str | None = None,
        patient_id: str | None = None,
        accession_number: str | None = None,
        limit: int | None = None,
        oldest_first: bool = False,
    ) -> list[AuditRecord]:
        """Audit rows matching every filter given, newest first (or oldest first)."""
        ...

    def last_audit_id(self) -> int:
        """The id of the newest audit row (0 when there is none)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
