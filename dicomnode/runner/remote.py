"""The runner stage with ``runner.executor: celery``: due runs → their queues.

The node runs no pipeline. Each tick it

* reclaims the runs whose worker stopped renewing its lease (the worker died,
  or lost the job store): the run fails as any failed attempt does (retried,
  or DEAD after ``max_attempts``), recorded as the lost holder, and only if the
  lease is still expired when the store records it;
* sends the job id of every due run (ROUTED, or FAILED_RETRYABLE and due) to
  ``dicomnode.<pipeline>``, and a run sent ``requeue_seconds`` ago that no
  worker claimed once more (its message was lost). A copy of a message that
  arrives after the run was claimed does nothing.

While the broker is unreachable the runs wait in the job store, sent when it
is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kombu.exceptions import OperationalError

from dicomnode.config.schema import RunnerConfig
from dicomnode.errors import JobStoreError, LeaseLostError
from dicomnode.jobs.ports import RunnerStore
from dicomnode.runner.broker import TASK_NAME, celery_app, queue_name
from dicomnode.runner.runs import record_outcome
from dicomnode.runner.worker import Outcome
from dicomnode.scheduling import Loop, Wakeup

__all__ = ["RemoteRunner"]

LOGGER = logging.getLogger(__name__)

#: Runs sent per tick at most.
BATCH = 200


class RemoteRunner:
    """Sends due runs to Celery workers and reclaims runs of lost workers.

    Parameters
    ----------
    config : RunnerConfig
        With ``executor: celery`` and its ``celery`` section.
    store : RunnerStore
        The job store.
    results_root : Path
        Where workers save results (for the record of a reclaimed run).
    clock : callable
        Seconds since the epoch.
    """

    def __init__(
        self,
        config: RunnerConfig,
        store: RunnerStore,
        results_root: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert config.celery is not None
        self.config = config
        self.celery = config.celery
        self.store = store
        self.results_root = results_root
        self.clock = clock
        self.app: Any = celery_app(config.celery, name="dicomnode-node")
        self._loop = Loop("dicomnode-queue", self.tick, config.poll_seconds, self._failed)
        self._broker_down = False

    def start(self) -> None:
        """Start sending and reclaiming (runs left RUNNING stay with their workers)."""
        self._loop.start()
        LOGGER.info("runner: pipelines run on Celery workers (queues dicomnode.<pipeline>)")

    @property
    def wakeup(self) -> Wakeup:
        """Set it when a run became ROUTED (the wiring does, on the job store's
        commits): it is sent to its queue at once, not at the next poll."""
        return self._loop.wakeup

    @staticmethod
    def _failed(exc: Exception) -> None:
        if not isinstance(exc, JobStoreError):
            raise exc  # a bug: the thread ends and alive() says so
        LOGGER.error("runner: job store error, retrying: %s", exc)

    def tick(self) -> None:
        """Reclaim expired leases, then send what is due."""
        now = self.clock()
        for job in self.store.expired_leases(now):
            outcome = Outcome(
                job.id,
                ok=False,
                summary=f"worker {job.claimed_by} stopped renewing its lease of the run "
                "(it died, or lost the job store); reclaimed",
            )
            try:
                record_outcome(
                    self.store,
                    self.config,
                    outcome,
                    results_root=self.results_root,
                    clock=self.clock,
                    claimant=job.claimed_by,
                    expired_at=now,
                )
            except LeaseLostError:
                continue  # renewed or finished meanwhile
        for job in self.store.runs_to_queue(now, self.celery.requeue_seconds, BATCH):
            if not self._send(job.id, job.pipeline):
                return
            self.store.mark_queued(job.id, now)
            LOGGER.info(
                "job %d: %s sent to queue %s%s",
                job.id,
                job.pipeline,
                queue_name(job.pipeline),
                "" if job.queued_at is None else " again (not claimed)",
                extra={"study_uid": job.study_instance_uid, "job_id": job.id},
            )

    def _send(self, job_id: int, pipeline: str) -> bool:
        """Send one run's job id; ``False`` when the broker cannot be reached."""
        try:
            self.app.send_task(TASK_NAME, args=[job_id], queue=queue_name(pipeline))
        except (OperationalError, OSError) as exc:
            if not self._broker_down:
                LOGGER.error(
                    "runner: the broker cannot be reached (%s); runs wait in the job store",
                    exc,
                )
            self._broker_down = True
            return False
        if self._broker_down:
            LOGGER.info("runner: the broker is back; sending the runs that waited")
            self._broker_down = False
        return True

    def alive(self) -> bool:
        """Whether the queueing thread runs (the workers are other processes)."""
        return self._loop.alive()

    def stop(self) -> None:
        """Stop sending; runs on workers go on there."""
        self._loop.stop()
        self.app.close()
