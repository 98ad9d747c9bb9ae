"""The runner stage: ROUTED runs → worker processes → RESULTS_WRITTEN.

It claims runs from the job store, hands them to the worker pool with the
pipeline's timeout, and records each outcome (:func:`~dicomnode.runner.runs.record_outcome`,
as Celery workers do): success moves the run on, a failure becomes
FAILED_RETRYABLE (retried with exponential backoff) until ``max_attempts``,
then DEAD; a failure that retrying cannot fix (unknown pipeline, bad model, a
series that is not a valid volume) is DEAD at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from dicomnode.config.destinations import Destination
from dicomnode.config.schema import RunnerConfig
from dicomnode.errors import InputError, JobStoreError
from dicomnode.jobs.models import Run
from dicomnode.jobs.ports import RunnerStore
from dicomnode.metrics import RunMetrics
from dicomnode.protocol import ResultWriter
from dicomnode.resultfile import remove_staging
from dicomnode.runner.pool import WorkerPool
from dicomnode.runner.prefetch import Prefetch
from dicomnode.runner.registry import PipelineRegistry
from dicomnode.runner.runs import build_task, max_attempts_for, record_outcome, timeout_for
from dicomnode.runner.worker import Outcome, WorkerSettings
from dicomnode.scheduling import Loop, Wakeup

LOGGER = logging.getLogger(__name__)

#: The largest study (bytes of its files) a worker reads ahead; its volumes take
#: about twice that in memory until its runs take them.
READ_AHEAD_MAX_BYTES = 1 << 30


def pipeline_options(config: RunnerConfig) -> dict[str, dict[str, object]]:
    """Options the workers pass to pipelines' ``configure``, by pipeline name.

    From ``runner.pipelines.<name>``: ``bundle`` (an absolute path, so a
    relative one means relative to the directory the node starts in), and the
    ``nnunet`` settings (its ``code_map`` made absolute likewise), and
    ``model`` (torchscript, onnx: a manifest name), ``inputs`` (monai-bundle:
    role to a Series Description regex), ``score_threshold`` and ``labels``
    (monai-bundle: a detection bundle's reporting score and class names).
    """
    options: dict[str, dict[str, object]] = {}
    for name, settings in config.pipelines.items():
        if settings.bundle is not None:
            options.setdefault(name, {})["bundle"] = str(settings.bundle.resolve())
        if settings.nnunet is not None:
            nnunet = settings.nnunet.model_dump()
            if settings.nnunet.code_map is not None:
                nnunet["code_map"] = str(settings.nnunet.code_map.resolve())
            options.setdefault(name, {}).update(nnunet)
        if settings.model is not None:
            options.setdefault(name, {})["model"] = settings.model
        if settings.inputs is not None:
            options.setdefault(name, {})["inputs"] = {
                role: pattern.pattern for role, pattern in settings.inputs.items()
            }
        if settings.score_threshold is not None:
            options.setdefault(name, {})["score_threshold"] = settings.score_threshold
        if settings.labels is not None:
            options.setdefault(name, {})["labels"] = dict(settings.labels)
    return options


def _size(files: tuple[str, ...]) -> int:
    """The bytes of the files that are there."""
    total = 0
    for path in files:
        try:
            total += os.stat(path).st_size
        except OSError:
            continue  # gone: its run will say so
    return total


class Runner:
    """Runs pipelines for ROUTED jobs.

    Parameters
    ----------
    config : RunnerConfig
        Device, workers, timeouts, retries, plugins.
    store : RunnerStore
        The job store.
    results_root : Path
        Results are saved in ``<results_root>/job-<id>``.
    outbox_root : Path, optional
        Objects the writer makes go to ``<outbox_root>/job-<id>``.
    writer : ResultWriter, optional
        Turns results into DICOM objects, in the worker, after the pipeline.
    node_name : str
        The node's AE title, for the objects' device observer.
    destinations : mapping of str to Destination
        The configured destinations: the HL7 ones a run notifies give the
        headers of the ORU^R01 the writer builds for them.
    log_level : str
        Logging level inside the workers.
    descriptors : bool
        Describe each run's input and output and keep the descriptors in the
        store for drift checks.
    clock : callable
        Seconds since the epoch.
    metrics : RunMetrics, optional
        Records each run's duration and the worker's per-step timings.
    log_format : str
        ``text`` or ``json`` log lines inside the workers.
    claimant : str, optional
        The name this node's claims of runs carry in the job store (see
        :func:`dicomnode.service.node_identity`): at start it requeues only the
        runs it left RUNNING, not those of other nodes sharing the store.
    read_ahead_seconds : float, optional
        When given, an idle worker reads a study whose instances stopped
        arriving ``read_ahead_after`` seconds ago while its quiet period runs,
        and keeps its volumes this long for its runs
        (:mod:`~dicomnode.runner.prefetch`); the node gives the assembly's
        ``quiet_seconds`` plus a minute.
    read_ahead_after : float
        Seconds without a new instance before a study is read ahead; the node
        gives a quarter of ``quiet_seconds`` (a sender's pause shorter than that
        does not make the worker read a study still arriving).
    """

    def __init__(
        self,
        config: RunnerConfig,
        store: RunnerStore,
        results_root: Path,
        log_level: str = "INFO",
        clock: Callable[[], float] = time.time,
        *,
        outbox_root: Path | None = None,
        writer: ResultWriter | None = None,
        node_name: str = "DICOMNODE",
        preload: tuple[str, ...] = (),
        destinations: Mapping[str, Destination] | None = None,
        descriptors: bool = True,
        metrics: RunMetrics | None = None,
        log_format: str = "text",
        claimant: str | None = None,
        read_ahead_seconds: float | None = None,
        read_ahead_after: float = 0.5,
    ) -> None:
        self.config = config
        self.read_ahead_seconds = read_ahead_seconds
        self.read_ahead_after = read_ahead_after
        #: (round id, instance count) of the rounds read ahead, newest last
        self._read_ahead: deque[tuple[int, int]] = deque(maxlen=64)
        #: the name this node's claims carry (see :meth:`start`)
        self.claimant = claimant
        self.metrics = metrics
        #: run id -> (monotonic start, pipeline) of the runs in the workers
        self._started: dict[int, tuple[float, str]] = {}
        self.store = store
        self.destinations: Mapping[str, Destination] = destinations or {}
        self.results_root = results_root
        self.outbox_root = outbox_root
        self.clock = clock
        self.registry = PipelineRegistry.discover(config.plugins)
        self.pool = WorkerPool(
            config.workers,
            WorkerSettings(
                device=config.device,
                threads=config.threads,
                plugins=tuple(config.plugins),
                models_dir=str(config.models_dir.resolve()),
                writer=writer,
                preload=tuple(n for n in preload if n in self.registry),
                node_name=node_name,
                options=pipeline_options(config),
                descriptors=descriptors,
                log_format=log_format,
            ),
            log_level=log_level,
        )
        self._loop = Loop(
            "dicomnode-runner",
            self._pass,
            config.poll_seconds,
            self._failed,
            waitables=self.pool.waitables,
        )

    def timeout_for(self, pipeline: str) -> float:
        """The pipeline's timeout in seconds."""
        return timeout_for(self.config, pipeline)

    def max_attempts_for(self, pipeline: str) -> int:
        """How many times the pipeline is tried before the run is DEAD."""
        return max_attempts_for(self.config, pipeline)

    def start(self) -> None:
        """Remove what a stopped node left half-written, requeue runs it left
        RUNNING, start workers and polling."""
        for root in filter(None, (self.results_root, self.outbox_root)):
            removed = remove_staging(root)
            if removed:
                LOGGER.info("removed %d half-written result(s) left in %s", removed, root)
        orphans = self.store.requeue_orphans("the node stopped during the run", self.claimant)
        if orphans:
            LOGGER.warning("requeued %d run(s) left RUNNING by an earlier stop", len(orphans))
        self.pool.start()
        LOGGER.info(
            "runner: %d worker(s) on %s; pipelines: %s",
            self.config.workers,
            self.pool.device,
            ", ".join(self.registry.names()) or "none",
        )
        self._loop.start()

    @property
    def wakeup(self) -> Wakeup:
        """Set it when a run became ROUTED (the wiring does, on the job
        store's commits): it starts at once, not at the next poll. A worker's
        answer (or its death) wakes the loop by itself."""
        return self._loop.wakeup

    def _pass(self) -> None:
        # A plain loop rather than a scheduler: a tick may block for seconds
        # while a crashed worker is replaced, and nothing is gained by queueing.
        self.tick()

    @staticmethod
    def _failed(exc: Exception) -> None:
        if not isinstance(exc, JobStoreError):
            raise exc  # a bug: the thread ends and alive() says so
        LOGGER.error("runner: job store error, retrying: %s", exc)

    def tick(self) -> None:
        """Record finished runs, then start as many new ones as workers are free."""
        for outcome in self.pool.poll():
            self._record(outcome)
        idle = self.pool.idle()
        if idle:
            for job in self.store.claim_runs(self.clock(), idle, self.claimant):
                self._dispatch(job)
        if self.read_ahead_seconds is not None and self.pool.idle():
            self._read_ahead_one()

    def _read_ahead_one(self) -> None:
        """Ask an idle worker to read the newest study round whose instances
        stopped arriving and that was not read ahead as it is now."""
        assert self.read_ahead_seconds is not None
        now = self.clock()
        for job in reversed(self.store.open_rounds()):
            key = (job.id, job.instance_count)
            if now - job.last_instance_at < self.read_ahead_after or key in self._read_ahead:
                continue
            files = tuple(record.path for record in self.store.instances_of(job.id))
            if _size(files) > READ_AHEAD_MAX_BYTES:
                LOGGER.debug("job %d: too large to read ahead", job.id)
            elif self.pool.prefetch(Prefetch(files, self.read_ahead_seconds)):
                LOGGER.debug("job %d: %d instance(s) read ahead", job.id, len(files))
            else:
                return  # no warm worker free: again at the next pass
            self._read_ahead.append(key)
            return

    def _dispatch(self, job: Run) -> None:
        extra = {"study_uid": job.study_instance_uid, "job_id": job.id}
        if job.pipeline not in self.registry:
            known = ", ".join(self.registry.names()) or "none"
            self._record(
                Outcome(
                    job.id,
                    ok=False,
                    summary=f"pipeline {job.pipeline!r} is not installed (installed: {known})",
                    permanent=True,
                )
            )
            return
        try:
            task = build_task(
                self.store,
                job,
                results_root=self.results_root,
                outbox_root=self.outbox_root,
                destinations=self.destinations,
            )
        except InputError as exc:
            self._record(Outcome(job.id, ok=False, summary=str(exc), permanent=True))
            return
        self.pool.submit(task, self.timeout_for(job.pipeline))
        self._started[job.id] = (time.monotonic(), job.pipeline)
        LOGGER.info(
            "job %d: running %s%s on %d instance(s) (attempt %d)",
            job.id,
            job.pipeline,
            " (shadow)" if job.shadow else "",
            len(task.files),
            job.attempts,
            extra=extra,
        )

    def _record(self, outcome: Outcome) -> None:
        verdict = record_outcome(
            self.store,
            self.config,
            outcome,
            results_root=self.results_root,
            clock=self.clock,
        )
        started = self._started.pop(outcome.job_id, None)
        if self.metrics is not None and started is not None:
            seconds, pipeline = time.monotonic() - started[0], started[1]
            self.metrics.finished(pipeline, verdict, seconds, outcome.timings)

    def worker_states(self) -> dict[str, int]:
        """How many workers are ``warm`` (pipelines loaded, writer warmed up)
        and how many are still ``warming`` (a run given to one waits for that)."""
        warm = self.pool.warm()
        return {"warm": warm, "warming": self.config.workers - warm}

    def alive(self) -> bool:
        """Whether the polling thread and every worker process run."""
        return self._loop.alive() and self.pool.alive()

    def stop(self) -> None:
        """Stop polling and the workers; runs in flight become FAILED_RETRYABLE."""
        self._loop.stop()
        for task in self.pool.stop():
            try:
                self.store.fail_run(
                    task.job_id, "the node stopped during the run", None, self.clock()
                )
            except JobStoreError as exc:
                LOGGER.error("job %d: could not record the stop: %s", task.job_id, exc)
