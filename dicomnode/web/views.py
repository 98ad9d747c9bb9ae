"""What the console reads of the job store, as the API's models."""

from __future__ import annotations

import statistics
import time
from typing import Protocol

from dicomnode.jobs import InstanceRecord, Job, JobState, OutboxItem, Study, Transition
from dicomnode.web.models import (
    Dashboard,
    DeliveryOut,
    JobOut,
    StudyDetail,
    StudySummary,
    TransitionOut,
)

__all__ = ["ConsoleStore", "dashboard", "study_detail", "study_summaries"]

#: The run states that have written results a preview can show.
PREVIEW_STATES = frozenset(
    {JobState.RESULTS_WRITTEN, JobState.EXPORTING, JobState.DONE, JobState.DEAD}
)


class ConsoleStore(Protocol):
    """The job store verbs the console uses."""

    def studies(self) -> list[Study]: ...

    def jobs(
        self, *, study_instance_uid: str | None = None, state: JobState | None = None
    ) -> list[Job]: ...

    def get_job(self, job_id: int) -> Job: ...

    def history(self, job_id: int) -> list[Transition]: ...

    def outbox(self, job_id: int) -> list[OutboxItem]: ...

    def instances_of(self, job_id: int) -> list[InstanceRecord]: ...

    def state_counts(self) -> dict[tuple[str, str], int]: ...

    def retry(self, job_id: int) -> Job: ...

    def replay(self, job_id: int, *, only_failed: bool = False) -> Job: ...


def _summary(study: Study) -> StudySummary:
    return StudySummary(
        study_instance_uid=study.study_instance_uid,
        modalities=study.modalities,
        series_count=study.series_count,
        instance_count=study.instance_count,
        rounds=study.rounds,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        latest_state=str(study.latest_state),
    )


def study_summaries(
    store: ConsoleStore,
    *,
    uid: str | None = None,
    state: str | None = None,
    modality: str | None = None,
    limit: int = 100,
) -> list[StudySummary]:
    """Studies, newest first, filtered by UID prefix, latest state and modality."""
    found = []
    for study in store.studies():
        if uid and not study.study_instance_uid.startswith(uid):
            continue
        if state and str(study.latest_state) != state:
            continue
        if modality and modality not in study.modalities.split(","):
            continue
        found.append(_summary(study))
        if len(found) >= limit:
            break
    return found


def _delivery(item: OutboxItem) -> DeliveryOut:
    return DeliveryOut(
        id=item.id,
        job_id=item.job_id,
        destination=item.destination,
        kind=item.kind,
        state=item.state,
        attempts=item.attempts,
        last_error=item.last_error,
        sop_class_uid=item.sop_class_uid,
        sop_instance_uid=item.sop_instance_uid,
        series_instance_uid=item.series_instance_uid,
        has_file=bool(item.path) and item.kind == "dicom",
    )


def job_out(store: ConsoleStore, job: Job) -> JobOut:
    """A job with its state changes and deliveries."""
    deliveries = [_delivery(item) for item in store.outbox(job.id)] if job.kind == "run" else []
    return JobOut(
        id=job.id,
        kind=job.kind,
        study_instance_uid=job.study_instance_uid,
        round=job.round,
        parent_id=job.parent_id,
        state=str(job.state),
        calling_ae=job.calling_ae,
        instance_count=job.instance_count,
        attempts=job.attempts,
        reason=job.reason,
        opened_at=job.opened_at,
        updated_at=job.updated_at,
        pipeline=job.pipeline,
        rule=job.rule,
        series_instance_uid=job.series_instance_uid,
        destinations=list(job.destinations),
        notify=list(job.notify),
        result_status=job.result_status,
        purged=job.purged_at is not None,
        has_preview=(
            job.kind == "run"
            and job.outbox_dir is not None
            and job.purged_at is None
            and job.state in PREVIEW_STATES
        ),
        transitions=[
            TransitionOut(
                from_state=None if t.from_state is None else str(t.from_state),
                to_state=str(t.to_state),
                at=t.at,
                reason=t.reason,
            )
            for t in store.history(job.id)
        ],
        deliveries=deliveries,
    )


def study_detail(store: ConsoleStore, uid: str) -> StudyDetail | None:
    """A study with every round and run, oldest first; ``None`` when unknown."""
    study = next((s for s in store.studies() if s.study_instance_uid == uid), None)
    if study is None:
        return None
    jobs = sorted(store.jobs(study_instance_uid=uid), key=lambda j: j.id)
    return StudyDetail(study=_summary(study), jobs=[job_out(store, job) for job in jobs])


def failing_deliveries(store: ConsoleStore) -> list[DeliveryOut]:
    """Deliveries that failed at least once and are not delivered, newest run first."""
    found: list[DeliveryOut] = []
    for state in (JobState.FAILED_RETRYABLE, JobState.DEAD, JobState.EXPORTING):
        for job in store.jobs(state=state):
            if job.kind != "run":
                continue
            found.extend(
                _delivery(item)
                for item in store.outbox(job.id)
                if item.state != "DELIVERED" and (item.attempts > 0 or item.state == "DEAD")
            )
    return found


def _latency(store: ConsoleStore, since: float) -> dict[str, dict[str, float]]:
    """Per pipeline, seconds from routed to done of the runs done since ``since``."""
    seconds: dict[str, list[float]] = {}
    for job in store.jobs(state=JobState.DONE):
        if job.kind != "run" or job.updated_at < since or job.pipeline is None:
            continue
        history = store.history(job.id)
        if history:
            seconds.setdefault(job.pipeline, []).append(history[-1].at - history[0].at)
    return {
        name: {
            "runs": float(len(values)),
            "median_s": statistics.median(values),
            "max_s": max(values),
        }
        for name, values in sorted(seconds.items())
    }


def dashboard(
    store: ConsoleStore, free_bytes: int | None, floor_bytes: int, now: float | None = None
) -> Dashboard:
    """The dashboard's figures."""
    now = time.time() if now is None else now
    studies = store.studies()
    by_state: dict[str, dict[str, int]] = {}
    for (kind, state), count in sorted(store.state_counts().items()):
        by_state.setdefault(kind, {})[state] = count
    return Dashboard(
        instances_received=sum(s.instance_count for s in studies),
        studies_received=len(studies),
        jobs_by_state=by_state,
        deliveries_failing=len(failing_deliveries(store)),
        dead_runs=by_state.get("run", {}).get(str(JobState.DEAD), 0),
        disk_free_bytes=free_bytes,
        disk_floor_bytes=floor_bytes,
        latency_24h=_latency(store, now - 86400),
    )
