"""``dicomnode worker``: a Celery worker that runs pipelines for the node.

It consumes the queues of the pipelines it serves (``dicomnode.<pipeline>``),
one message at a time (Celery's solo pool, prefetch 1: the message it runs is
the only one it holds, so a burst spreads over every worker; for several runs
at once on one host, start several workers). A message names a run by its job
id; the worker

1. claims the run in the job store under its name with a lease (``claimed_by``,
   ``lease_until``); a run that is not due (another worker holds it, it is
   finished, or backing off) is left alone and the message acknowledged;
2. makes its task from the job store and runs it in one of its worker
   processes (:class:`~dicomnode.runner.pool.WorkerPool`: pipelines loaded
   once and kept warm, inputs read from the spool, the result and
   objects written there), renewing the lease while it runs;
3. records the outcome exactly as the local runner does
   (:func:`~dicomnode.runner.runs.record_outcome`), as the run's holder: a
   worker whose lease was lost meanwhile records nothing.

Only then is the message acknowledged (``acks_late``), so a worker that dies
leaves its message to the broker and its run to the node's lease reclaim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from celery.signals import worker_ready

from dicomnode.config.destinations import Destination
from dicomnode.config.schema import RunnerConfig
from dicomnode.errors import InputError, JobStoreError, LeaseLostError
from dicomnode.jobs.models import Run
from dicomnode.jobs.ports import RunnerStore
from dicomnode.runner.broker import TASK_NAME, celery_app, queue_name
from dicomnode.runner.pool import WorkerPool
from dicomnode.runner.registry import PipelineRegistry
from dicomnode.runner.runs import build_task, record_outcome, timeout_for
from dicomnode.runner.worker import Outcome, WorkerSettings

__all__ = ["CeleryWorker"]

LOGGER = logging.getLogger(__name__)


class CeleryWorker:
    """A Celery worker serving some pipelines, with warm worker processes.

    Parameters
    ----------
    config : RunnerConfig
        With ``executor: celery``.
    store : RunnerStore
        The job store the node uses.
    pipelines : tuple of str
        The pipelines served: their queues are consumed, their models loaded
        at start.
    name : str
        The worker's name (Celery node name), unique among the workers; it
        claims runs under it.
    settings : WorkerSettings
        For the worker processes (device, writer, options...).
    results_root, outbox_root : Path
        On the shared spool: where results and objects are written.
    destinations : mapping of str to Destination
        The configured destinations (HL7 headers of the notifications).
    log_level : str
        Logging level of Celery and the worker processes.
    clock : callable
        Seconds since the epoch.
    """

    def __init__(
        self,
        config: RunnerConfig,
        store: RunnerStore,
        pipelines: tuple[str, ...],
        name: str,
        settings: WorkerSettings,
        *,
        results_root: Path,
        outbox_root: Path,
        destinations: Mapping[str, Destination],
        log_level: str = "INFO",
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert config.celery is not None
        self.config = config
        self.lease_seconds = config.celery.lease_seconds
        self.store = store
        self.pipelines = pipelines
        self.name = name
        self.settings = settings
        self.results_root = results_root
        self.outbox_root = outbox_root
        self.destinations = destinations
        self.log_level = log_level
        self.clock = clock
        self.registry = PipelineRegistry.discover(config.plugins)
        self.pool = WorkerPool(1, settings, log_level=log_level)
        self.app: Any = celery_app(config.celery, name="dicomnode-worker")
        self.app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)(self.execute)

    def start_pools(self) -> None:
        """Start the worker process, which loads the served pipelines.

        Raises
        ------
        RunnerError
            The worker process could not start (bad device, broken plugin...).
        """
        self.pool.start()
        LOGGER.info(
            "worker %s: pipelines %s loaded on %s",
            self.name,
            ", ".join(self.pipelines),
            self.pool.device,
        )

    def run(self) -> None:
        """Consume the queues until SIGTERM (a warm shutdown: runs in flight
        finish and are recorded first), then stop the worker processes."""

        def _ready(**_: object) -> None:
            LOGGER.info(
                "worker %s ready: queues %s",
                self.name,
                ", ".join(queue_name(p) for p in self.pipelines),
            )

        worker_ready.connect(_ready, weak=False)
        argv = [
            "worker",
            "--hostname",
            self.name,
            "--queues",
            ",".join(queue_name(p) for p in self.pipelines),
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--prefetch-multiplier",
            "1",
            "--loglevel",
            self.log_level,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        try:
            self.app.worker_main(argv=argv)
        finally:
            self.pool.stop()

    def execute(self, job_id: int) -> str:
        """The task: run the run ``job_id``; return what became of it once the
        broker can take the message's acknowledgement."""
        done = self._execute(int(job_id), self.name, self.pool)
        self._await_broker()
        return done

    def _await_broker(self) -> None:
        """Return once the broker answers. The message is acknowledged after the
        task returns (``acks_late``); an acknowledgement lost to a broker that is
        down would leave the worker holding it forever (prefetch 1), taking no
        other message. The outcome is already in the job store."""
        warned = False

        def _down(exc: Exception, interval: float) -> None:
            nonlocal warned
            if not warned:
                LOGGER.warning(
                    "worker %s: the broker cannot be reached (%s); waiting for it", self.name, exc
                )
                warned = True

        with self.app.connection_for_write() as connection:
            connection.ensure_connection(
                errback=_down,
                max_retries=None,
                interval_start=0.5,
                interval_step=0.5,
                interval_max=2.0,
            )
        if warned:
            LOGGER.info("worker %s: the broker is back", self.name)

    def _execute(self, job_id: int, claimant: str, pool: WorkerPool) -> str:
        job = self.store.claim_run(job_id, claimant, self.clock(), self.lease_seconds)
        if job is None:
            LOGGER.info(
                "job %d: not due (held elsewhere, finished or backing off); message dropped",
                job_id,
            )
            return "not due"
        extra = {"study_uid": job.study_instance_uid, "job_id": job.id}
        outcome = self._start(job, pool)
        if outcome is None:
            LOGGER.info(
                "job %d: running %s on %s (attempt %d)",
                job.id,
                job.pipeline,
                claimant,
                job.attempts,
                extra=extra,
            )
            outcome = self._wait(job, claimant, pool)
        if outcome is None:
            return "lease lost"
        try:
            record_outcome(
                self.store,
                self.config,
                outcome,
                results_root=self.results_root,
                clock=self.clock,
                claimant=claimant,
            )
        except LeaseLostError as exc:
            LOGGER.warning("job %d: outcome not recorded: %s", job.id, exc, extra=extra)
            return "lease lost"
        return "recorded"

    def _start(self, job: Run, pool: WorkerPool) -> Outcome | None:
        """Hand the run to the slot's worker process; an outcome when it cannot start."""
        if job.pipeline not in self.registry or job.pipeline not in self.pipelines:
            return Outcome(
                job.id,
                ok=False,
                summary=f"worker {self.name} does not serve pipeline {job.pipeline!r}",
            )
        try:
            task = build_task(
                self.store,
                job,
                results_root=self.results_root,
                outbox_root=self.outbox_root,
                destinations=self.destinations,
            )
        except InputError as exc:
            return Outcome(job.id, ok=False, summary=str(exc), permanent=True)
        pool.submit(task, timeout_for(self.config, job.pipeline))
        return None

    def _wait(self, job: Run, claimant: str, pool: WorkerPool) -> Outcome | None:
        """The run's outcome, renewing the lease meanwhile; ``None`` when the
        lease was lost (the run is stopped: it is someone else's now)."""
        renew_every = self.lease_seconds / 3
        renew_at = time.monotonic() + renew_every
        while True:
            finished = pool.poll()
            if finished:
                return finished[0]
            if time.monotonic() >= renew_at:
                try:
                    held = self.store.renew_lease(
                        job.id, claimant, self.clock() + self.lease_seconds
                    )
                except JobStoreError as exc:
                    LOGGER.warning("job %d: lease not renewed, trying again: %s", job.id, exc)
                    held = True
                if not held:
                    LOGGER.warning(
                        "job %d: %s lost its lease (the run was reclaimed); stopping it",
                        job.id,
                        claimant,
                    )
                    pool.stop()
                    pool.start()
                    return None
                renew_at = time.monotonic() + renew_every
            time.sleep(min(self.config.poll_seconds, 0.1))
