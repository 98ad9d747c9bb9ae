"""What every executor does with a run: make its :class:`Task` from the job
store, and record its :class:`Outcome` there.

The local runner (:mod:`dicomnode.runner.stage`) and a Celery worker
(:mod:`dicomnode.runner.celery_worker`) both call these, so a run ends the same
way wherever it ran: success moves it on to RESULTS_WRITTEN with its outbox, a
failure becomes FAILED_RETRYABLE (retried with exponential backoff) until
``max_attempts``, then DEAD; a failure that retrying cannot fix is DEAD at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from dicomnode.config.destinations import Destination, HL7Destination
from dicomnode.config.schema import RunnerConfig
from dicomnode.errors import InputError, JobStoreError
from dicomnode.jobs.models import Run
from dicomnode.jobs.ports import RunnerStore
from dicomnode.protocol import NotificationTarget
from dicomnode.runner.worker import Outcome, Task

__all__ = ["build_task", "max_attempts_for", "record_outcome", "result_dir", "timeout_for"]

LOGGER = logging.getLogger(__name__)


def timeout_for(config: RunnerConfig, pipeline: str) -> float:
    """The pipeline's timeout in seconds (``runner.pipelines.<name>`` first)."""
    override = config.pipelines.get(pipeline)
    if override is not None and override.timeout_seconds is not None:
        return override.timeout_seconds
    return config.timeout_seconds


def max_attempts_for(config: RunnerConfig, pipeline: str) -> int:
    """How many times the pipeline is tried before the run is DEAD."""
    override = config.pipelines.get(pipeline)
    if override is not None and override.max_attempts is not None:
        return override.max_attempts
    return config.max_attempts


def result_dir(results_root: Path, job_id: int) -> Path:
    """Where run ``job_id`` saves its result."""
    return results_root / f"job-{job_id}"


def build_task(
    store: RunnerStore,
    job: Run,
    *,
    results_root: Path,
    outbox_root: Path | None,
    destinations: Mapping[str, Destination],
) -> Task:
    """The task of a claimed run: its input series' files as the job store
    recorded them, where its result and objects go, and the HL7 receivers it
    notifies.

    Raises
    ------
    InputError
        The input series has no instances (any more).
    """
    records = store.instances_of(job.parent_id)
    files = tuple(
        record.path for record in records if record.series_instance_uid == job.series_instance_uid
    )
    if not files:
        raise InputError("the input series has no instances")
    return Task(
        job_id=job.id,
        pipeline=job.pipeline,
        files=files,
        result_dir=str(result_dir(results_root, job.id)),
        outbox_dir=_outbox_dir(outbox_root, job),
        final=job.result_status == "final",
        notifications=() if job.shadow else _notifications(store, job, destinations),
        out_of_range=job.out_of_range,
        shadow=job.shadow,
        study_files=tuple(record.path for record in records),
    )


def _outbox_dir(outbox_root: Path | None, job: Run) -> str | None:
    """Where the run's objects go: ``<outbox_root>/job-<id>``, or for a
    shadow run (kept, never delivered) ``<outbox_root>/shadow/job-<id>``."""
    if outbox_root is None:
        return None
    root = outbox_root / "shadow" if job.shadow else outbox_root
    return str(root / f"job-{job.id}")


def _notifications(
    store: RunnerStore, job: Run, destinations: Mapping[str, Destination]
) -> tuple[NotificationTarget, ...]:
    """The HL7 receivers the run notifies, with their message headers; a
    receiver that already got a result of the same study, series and
    pipeline gets this one as a correction."""
    if not job.notify:
        return ()
    notified = store.notified_before(job.id)
    targets = []
    for name in job.notify:
        destination = destinations.get(name)
        if not isinstance(destination, HL7Destination):
            continue  # export ends its row DEAD: no message to send
        targets.append(
            NotificationTarget(
                destination=name,
                sending_application=destination.sending_application,
                sending_facility=destination.sending_facility,
                receiving_application=destination.receiving_application,
                receiving_facility=destination.receiving_facility,
                correction=name in notified,
            )
        )
    return tuple(targets)


def record_outcome(
    store: RunnerStore,
    config: RunnerConfig,
    outcome: Outcome,
    *,
    results_root: Path,
    clock: Callable[[], float],
    claimant: str | None = None,
    expired_at: float | None = None,
) -> str:
    """Record what became of a run, as the run's holder.

    Parameters
    ----------
    store : RunnerStore
        The job store.
    config : RunnerConfig
        Attempts and backoff.
    outcome : Outcome
        From the worker process (or made by the caller for a run that could
        not start, or whose worker stopped renewing its lease).
    results_root : Path
        Where the run saved its result (``<results_root>/job-<id>``).
    clock : callable
        Seconds since the epoch.
    claimant : str, optional
        The worker that holds the run (Celery workers); ``None`` for the local runner.
    expired_at : float, optional
        For a reclaim: the run's lease must have run out before this time.

    Returns
    -------
    str
        ``ok`` (results written), ``retry`` (FAILED_RETRYABLE) or ``dead``.

    Raises
    ------
    LeaseLostError
        ``claimant`` does not hold the run (any more), or the run already
        recorded an outcome: nothing was recorded.
    """
    job = store.get_run(outcome.job_id)
    extra = {"study_uid": job.study_instance_uid, "job_id": job.id}
    if outcome.ok:
        done = store.finish_run(
            job.id,
            str(result_dir(results_root, job.id)),
            outcome.summary,
            outcome.objects,
            outcome.messages,
            claimant=claimant,
        )
        LOGGER.info("job %d: %s finished, now %s", job.id, job.pipeline, done.state, extra=extra)
        if outcome.descriptors is not None:
            try:
                store.record_descriptors(job.id, job.pipeline, outcome.descriptors)
            except JobStoreError as exc:  # monitoring must not hold up delivery
                LOGGER.warning("job %d: descriptors not kept: %s", job.id, exc, extra=extra)
        return "ok"
    pipeline = job.pipeline
    attempts_left = max_attempts_for(config, pipeline) - job.attempts
    if outcome.permanent or attempts_left <= 0:
        store.fail_run(
            job.id,
            outcome.summary,
            outcome.traceback,
            None,
            claimant=claimant,
            expired_at=expired_at,
        )
        LOGGER.error(
            "job %d: %s failed, DEAD after %d attempt(s): %s",
            job.id,
            pipeline,
            job.attempts,
            outcome.summary,
            extra=extra,
        )
        return "dead"
    delay = config.retry_backoff_seconds * (2 ** max(0, job.attempts - 1))
    store.fail_run(
        job.id,
        outcome.summary,
        outcome.traceback,
        clock() + delay,
        claimant=claimant,
        expired_at=expired_at,
    )
    LOGGER.warning(
        "job %d: %s failed (attempt %d), retrying in %.0f s: %s",
        job.id,
        pipeline,
        job.attempts,
        delay,
        outcome.summary,
        extra=extra,
    )
    return "retry"
