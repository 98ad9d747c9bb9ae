"""Periodic passes: how the stages that poll the job store are driven."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler


def every(seconds: float, run: Callable[[], object], job_id: str) -> BackgroundScheduler:
    """Start a scheduler that calls ``run`` now and then every ``seconds``.

    A pass never overlaps the previous one, and passes missed while one ran
    long are run once, not made up one by one. Stop it with
    ``shutdown(wait=True)``, which waits for a pass in progress.

    Parameters
    ----------
    seconds : float
        The interval between the starts of two passes.
    run : callable
        One pass.
    job_id : str
        The job's name in the scheduler's logs.
    """
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        run,
        "interval",
        seconds=seconds,
        id=job_id,
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    scheduler.start()
    return scheduler
