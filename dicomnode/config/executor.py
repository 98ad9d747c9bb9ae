"""``runner.celery``: pipelines on Celery workers, one queue per pipeline.

With ``runner.executor: celery`` the node runs no pipeline itself: it sends
each due run's job id to the queue ``dicomnode.<pipeline>`` on the broker, and
``dicomnode worker`` processes (on this host or others that mount the same
spool and job store) claim the run with a lease, run it and record its outcome.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CeleryConfig(BaseModel):
    """The broker and the leases of runs on Celery workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: str = Field(
        pattern=r"^rediss?://[^\s]+$",
        description="The Redis broker, e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS).",
    )
    lease_seconds: float = Field(
        default=60.0,
        ge=1,
        description=(
            "How long a worker's claim of a run holds; the worker renews it every third of "
            "that while the run goes on. A run whose lease ran out (its worker died) is "
            "reclaimed and queued again."
        ),
    )
    requeue_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "A run sent to its queue that no worker claimed this long after is sent again "
            "(its message was lost, e.g. by a broker that restarted without persistence); "
            "a copy that arrives later does nothing."
        ),
    )
    visibility_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "The broker gives an unacknowledged message (its worker vanished) to another "
            "worker after this long; keep it above the longest run."
        ),
    )
    connect_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="How long a send waits for the broker."
    )
