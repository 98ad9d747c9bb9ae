"""Readiness of a node's parts: the job store, the disk floor, the workers."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomnode.health import liveness, readiness
from dicomnode.jobs import SQLiteJobStore
from dicomnode.spool import Spool
from tests.helpers import wait_for


def test_a_closed_job_store_is_named(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    spool = Spool(tmp_path / "spool")
    assert readiness(store, spool, {}).ok
    store.close()
    report = readiness(store, spool, {"ingress": lambda: True})
    assert (report.ok, report.http_status, report.failed) == (False, 503, ("job_store",))
    body = json.loads(report.body())
    assert body["status"] == "unavailable" and body["failed"] == ["job_store"]
    assert body["checks"]["job_store"]["detail"].startswith("does not answer")
    assert body["checks"]["disk"]["ok"] and body["checks"]["ingress"]["ok"]
    assert liveness().http_status == 200


def test_a_dead_pipeline_worker_makes_the_node_unready(
    make_settings: Callable[..., Any], start_node: Callable[..., Any]
) -> None:
    """A worker process that dies while idle (the kernel's OOM killer) shows
    in the readiness report as ``runner`` until the runner replaces it."""
    node = start_node(
        make_settings(runner={"enabled": True, "device": "cpu", "threads": 1, "workers": 1})
    )
    assert node.readiness().ok, node.readiness().as_dict()
    (worker,) = [p for p in multiprocessing.active_children() if p.name == "runner-0"]
    worker.kill()
    worker.join(timeout=10)
    report = node.readiness()  # the worker is gone once joined
    assert report.failed == ("runner",), report.as_dict()
    # the runner's next poll replaces it: ready again
    wait_for(lambda: node.readiness().ok, 120, "a new worker")
    (fresh,) = [p for p in multiprocessing.active_children() if p.name == "runner-0"]
    assert fresh.pid != worker.pid
