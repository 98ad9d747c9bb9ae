"""The Celery side of ``runner.executor: celery``: the app, the queues, the task name.

A message carries the run's job id and nothing else: the worker reads
everything else (the input files, the destinations) from the job store and the
spool, which every host shares. One queue per pipeline, ``dicomnode.<name>``,
so each host subscribes to the pipelines it serves.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from dicomnode.config.executor import CeleryConfig

__all__ = ["QUEUE_PREFIX", "TASK_NAME", "celery_app", "queue_name"]

#: The one task: run the pipeline of the run whose job id is its only argument.
TASK_NAME = "dicomnode.run"
#: Queues are named ``dicomnode.<pipeline>``.
QUEUE_PREFIX = "dicomnode."


def queue_name(pipeline: str) -> str:
    """The queue of ``pipeline``'s runs."""
    return f"{QUEUE_PREFIX}{pipeline}"


def celery_app(config: CeleryConfig, name: str = "dicomnode") -> Any:
    """A Celery app on the configured broker, set up for runs that must not be lost.

    ``acks_late``: a message is acknowledged when its run ended, not when it
    started; ``task_reject_on_worker_lost``: a task whose worker process died is
    given back to the queue; prefetch 1: a worker reserves no message beyond
    the one it runs, so a burst spreads over every worker. The broker
    redelivers a message nobody acknowledged after
    ``visibility_timeout_seconds``. Messages are JSON; no results are kept
    (outcomes go to the job store).

    Parameters
    ----------
    config : CeleryConfig
        ``runner.celery``.
    name : str
        The app's name (Celery's ``main``).

    Returns
    -------
    celery.Celery
    """
    app = Celery(name, broker=config.broker, set_as_current=False)
    timeout = config.connect_timeout_seconds
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_create_missing_queues=True,
        broker_connection_timeout=timeout,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": config.visibility_timeout_seconds,
            "socket_connect_timeout": timeout,
            "socket_timeout": max(timeout, 10.0),
        },
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.0,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
    )
    return app
