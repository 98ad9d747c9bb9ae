"""Two receivers, one study: each ``dicomnode serve`` gets half of its instances at
the same time; with the job store on PostgreSQL and one spool between them the
study is assembled once, from both halves, run once (by the receivers, or by a
Celery worker), and its results reach the PACS (Orthanc) once."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import spool_files, store_statuses, storescu, wait_for
from tests.orthanc import Orthanc
from tests.redis_server import RedisServer
from tests.runner.faulty import GATE_ENV
from tests.runner.test_celery import PIPELINE, WorkerProcess
from tests.scale.conftest import Receiver

pytestmark = [pytest.mark.peers, pytest.mark.postgres, pytest.mark.slow]

SLICES = 8
# PIPELINE: test-gated, what test_celery's workers serve; without a gate it runs at once


def site_sections(
    orthanc: Orthanc, pipeline: str = "test-threshold", broker: str | None = None
) -> dict[str, Any]:
    """Every stage on in each receiver: a CT goes to a small threshold pipeline
    (``test-gated``: one that waits for its gate first) whose SEG and SR go to
    Orthanc; run by the receivers, or with ``broker`` by Celery workers."""
    celery = {"executor": "celery", "celery": {"broker": broker}} if broker else {}
    return {
        "assembly": {"quiet_seconds": 3.0, "poll_seconds": 0.1},
        "runner": {
            "enabled": True,
            "device": "cpu",
            "threads": 1,
            "workers": 1,
            "poll_seconds": 0.1,
            "retry_backoff_seconds": 0,
            "plugins": ["tests.runner.faulty:Threshold", "tests.runner.faulty:Gated"],
            **celery,
        },
        "routing": {
            "rules": [
                {
                    "name": "ct",
                    "match": {"series": {"Modality": {"equals": "CT"}}},
                    "pipeline": pipeline,
                    "destinations": ["pacs"],
                }
            ]
        },
        "destinations": {
            "pacs": {
                "type": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "timeout_seconds": 10,
            }
        },
        "export": {"poll_seconds": 0.2, "backoff_seconds": 1, "max_backoff_seconds": 2},
        "monitoring": {"enabled": False},
    }


def assert_one_result(orthanc: Orthanc, receiver: Receiver, run_id: int) -> None:
    """The run's SEG and SR delivered once each, and nothing else in Orthanc."""
    detail = receiver.cli_json("jobs", "show", str(run_id))
    assert sorted((d["kind"], d["state"], d["attempts"]) for d in detail["deliveries"]) == [
        ("dicom", "DELIVERED", 1),
        ("dicom", "DELIVERED", 1),
    ], detail["deliveries"]
    modalities = sorted(
        orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"] for s in orthanc.get("/series")
    )
    assert modalities == ["SEG", "SR"]
    assert orthanc.get("/statistics")["CountInstances"] == 2


def run_done(receiver: Receiver, study_uid: str) -> Callable[[], list[dict[str, Any]] | None]:
    """The study's jobs once it has a run and every run is DONE; a DEAD run fails."""

    def check() -> list[dict[str, Any]] | None:
        jobs = receiver.jobs(study_uid)
        runs = [j for j in jobs if j["kind"] == "run"]
        assert all(j["state"] != "DEAD" for j in runs), runs
        return jobs if runs and all(j["state"] == "DONE" for j in runs) else None

    return check


@pytest.mark.parametrize("executor", ["local", "celery"])
def test_a_study_pushed_half_to_each_receiver_is_assembled_run_and_delivered_once(
    receiver: Callable[..., Receiver],
    postgres_url: str,
    ct_series: Callable[..., Any],
    tmp_path: Path,
    executor: str,
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc").start()
    redis = RedisServer(tmp_path / "redis").start() if executor == "celery" else None
    worker: WorkerProcess | None = None
    try:
        spool = tmp_path / "spool"
        sections = site_sections(orthanc, PIPELINE, redis.url if redis else None)
        a = receiver("a", postgres_url, spool, **sections)
        b = receiver("b", postgres_url, spool, **sections)
        if redis is not None:
            worker = WorkerProcess(a.config_path, "w1", tmp_path / "w1.log", gate=None)
        series = ct_series(slices=SLICES, size=16)
        halves = [(series.paths[: SLICES // 2], a), (series.paths[SLICES // 2 :], b)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            pushes = [pool.submit(storescu, files, node.port) for files, node in halves]
            for push in pushes:
                sent = push.result()
                assert sent.returncode == 0, sent.stderr
                assert store_statuses(sent.stderr) == ["Success"] * (SLICES // 2), sent.stderr

        try:
            jobs = wait_for(run_done(a, series.study_uid), 120, "the study's run DONE", 0.5)
        except AssertionError as exc:
            logs = [(f"receiver {n.config_path.stem}", n.log()) for n in (a, b)]
            logs += [("worker w1", worker.log())] if worker else []
            told = "\n".join(f"--- {name}, last lines:\n{text[-3000:]}" for name, text in logs)
            raise AssertionError(f"{exc}\njobs: {a.jobs(series.study_uid)}\n{told}") from None
        rounds = [j for j in jobs if j["kind"] == "study"]
        runs = [j for j in jobs if j["kind"] == "run"]
        assert [(r["round"], r["instance_count"]) for r in rounds] == [(1, SLICES)], jobs
        assert [(r["pipeline"], r["attempts"]) for r in runs] == [(PIPELINE, 1)], jobs
        # one store: the other receiver sees the same jobs
        assert sorted(j["id"] for j in b.jobs(series.study_uid)) == sorted(j["id"] for j in jobs)
        assert len(spool_files(spool)) == SLICES

        (run,) = runs
        history = a.cli_json("jobs", "show", str(run["id"]))["history"]
        running = [step["reason"] for step in history if step["to_state"] == "RUNNING"]
        assert running == (["on w1"] if worker else [None]), history  # who ran it, once
        assert_one_result(orthanc, a, run["id"])
    finally:
        if worker is not None:
            worker.stop()
        if redis is not None:
            redis.stop()
        orthanc.stop()


def test_a_receiver_that_starts_leaves_a_run_of_another_receiver_alone(
    receiver: Callable[..., Receiver],
    postgres_url: str,
    ct_series: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = tmp_path / "gate"
    monkeypatch.setenv(GATE_ENV, str(gate))  # both receivers' pipelines wait for it
    orthanc = Orthanc(tmp_path / "orthanc").start()
    try:
        spool = tmp_path / "spool"
        a = receiver("a", postgres_url, spool, **site_sections(orthanc, "test-gated"))
        series = ct_series(slices=4, size=16)
        assert store_statuses(storescu(series.paths, a.port).stderr) == ["Success"] * 4

        def running() -> list[dict[str, Any]] | None:
            runs = [j for j in a.jobs(series.study_uid) if j["kind"] == "run"]
            return runs if [r["state"] for r in runs] == ["RUNNING"] else None

        (held,) = wait_for(running, 90, "the run RUNNING on receiver a", interval=0.3)
        b = receiver("b", postgres_url, spool, **site_sections(orthanc, "test-gated"))
        assert b.jobs(series.study_uid)  # b is up, on the same store
        gate.touch()
        jobs = wait_for(run_done(a, series.study_uid), 120, "the run DONE", interval=0.5)
        (run,) = [j for j in jobs if j["kind"] == "run"]
        history = a.cli_json("jobs", "show", str(run["id"]))["history"]
        assert [step["to_state"] for step in history].count("RUNNING") == 1, history
        assert (run["id"], run["attempts"]) == (held["id"], 1)
        assert_one_result(orthanc, a, run["id"])
    finally:
        orthanc.stop()
