"""Deciding when a study is complete.

A study's open assembly round becomes COMPLETE once no instance of it arrived
for ``quiet_seconds``, or at the latest ``max_wait_seconds`` after its first
instance. The timers live in the job store (``last_instance_at``,
``opened_at``), so after a restart pending rounds resume where they were and
each completes exactly once (the store's conditional update guarantees it even
if two assemblers ran at the same time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dicomnode.config import AssemblyConfig
from dicomnode.jobs.models import Job
from dicomnode.jobs.ports import AssemblyStore
from dicomnode.scheduling import Loop, Wakeup

LOGGER = logging.getLogger(__name__)

#: The shortest wait between two passes: a round due "now" by a float's width
#: is completed by the next pass, not spun on.
MIN_WAIT_SECONDS = 0.005


class Assembler:
    """Completes study rounds on time, in a thread of its own.

    Parameters
    ----------
    config : AssemblyConfig
        Quiet period, maximum wait and polling interval.
    store : AssemblyStore
        Where the rounds and their timers are.
    clock : callable, optional
        Current time in seconds since the epoch.
    policy : callable, optional
        Timing ``(quiet_seconds, max_wait_seconds)`` for one round, when
        routing rules override the defaults for some studies.
    """

    JOB_ID = "dicomnode-assembly"

    def __init__(
        self,
        config: AssemblyConfig,
        store: AssemblyStore,
        clock: Callable[[], float] = time.time,
        policy: Callable[[Job], tuple[float, float]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.policy = policy
        self._loop = Loop(self.JOB_ID, self._pass, config.poll_seconds, self._failed)

    @property
    def wakeup(self) -> Wakeup:
        """Set it when a round opened or changed (the wiring does, on the job
        store's commits): the next due time is looked up again at once."""
        return self._loop.wakeup

    def _failed(self, exc: Exception) -> None:
        LOGGER.error("assembly: pass failed, retrying at the next poll", exc_info=exc)

    def _pass(self) -> float | None:
        """One pass; returns how long until the next round falls due (the loop
        waits no longer than that, nor than ``poll_seconds``)."""
        self.run_once()
        if self.policy is not None:
            return None  # per-study timing: the poll interval bounds the delay
        due = self.store.next_due(self.config.quiet_seconds, self.config.max_wait_seconds)
        return None if due is None else max(MIN_WAIT_SECONDS, due - self.clock())

    def run_once(self) -> list[int]:
        """Complete every round that is due now; return their job ids."""
        now = self.clock()
        if self.policy is None:
            completed = self.store.complete_due(
                now, self.config.quiet_seconds, self.config.max_wait_seconds
            )
        else:
            completed = [
                job.id
                for job in self.store.open_rounds()
                if self.store.complete_round(job.id, now, *self.policy(job))
            ]
        for job_id in completed:
            job = self.store.get_job(job_id)
            LOGGER.info(
                "study %s round %d complete with %d instance(s) (job %d, %s)",
                job.study_instance_uid,
                job.round,
                job.instance_count,
                job.id,
                job.reason,
                extra={"study_uid": job.study_instance_uid, "job_id": job.id},
            )
        return completed

    def start(self) -> None:
        """Check due rounds now, then whenever the next round falls due, at
        least every ``poll_seconds``."""
        self._loop.start()
        pending = self.store.next_due(self.config.quiet_seconds, self.config.max_wait_seconds)
        if pending is not None:
            LOGGER.info("resuming assembly: next study due in %.1f s", pending - self.clock())

    def alive(self) -> bool:
        """Whether its thread runs."""
        return self._loop.alive()

    def stop(self) -> None:
        """Stop, waiting for a check in progress."""
        self._loop.stop()
