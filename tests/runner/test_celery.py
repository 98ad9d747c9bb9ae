"""Pipelines on Celery workers: real Redis, real ``dicomnode worker`` processes, the
node as a process, Orthanc as the PACS. A burst spreads over two workers; a worker
killed mid-run has its run reclaimed after its lease and re-run by the other; a
broker that restarts empty loses nothing; every study gets exactly one result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomnode.jobs import Job, JobState, SQLiteJobStore
from tests.helpers import node_config, store_of, storescu, wait_for, write_config
from tests.orthanc import Orthanc
from tests.redis_server import RedisServer
from tests.runner.faulty import GATE_ENV

pytestmark = [pytest.mark.peers, pytest.mark.slow]

PIPELINE = "test-gated"
LEASE = 8.0


class WorkerProcess:
    """``dicomnode worker`` in a session of its own, so that ``kill -9`` of the
    group takes its worker processes too, as a host that dies."""

    def __init__(self, config: Path, name: str, log: Path, gate: Path | None) -> None:
        self.name = name
        self.log_path = log
        env = {**os.environ}
        env.pop(GATE_ENV, None)
        if gate is not None:
            env[GATE_ENV] = str(gate)
        with log.open("ab") as out:
            command = [sys.executable, "-m", "dicomnode", "worker", "-c", str(config)]
            self.proc = subprocess.Popen(
                [*command, "--pipelines", PIPELINE, "--name", name],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_for(self._ready, 120, f"worker {name} to be ready", interval=0.2)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited:\n{self.log()}")
        return f"worker {self.name} ready" in self.log()

    def signal_group(self, signum: int) -> None:
        os.killpg(self.proc.pid, signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal_group(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.proc.wait()
        try:
            self.signal_group(signal.SIGKILL)  # its worker processes, if any are left
        except ProcessLookupError:
            pass


class Site:
    """Redis, Orthanc, the node (``runner.executor: celery``) and its workers."""

    def __init__(self, tmp_path: Path, node_process: Callable[..., Any]) -> None:
        self.tmp_path = tmp_path
        self.redis = RedisServer(tmp_path / "redis").start()
        self.orthanc = Orthanc(tmp_path / "orthanc").start()
        self.config = node_config(
            tmp_path,
            assembly={"quiet_seconds": 1.0, "poll_seconds": 0.1},
            runner={
                "enabled": True,
                "executor": "celery",
                "celery": {
                    "broker": self.redis.url,
                    "lease_seconds": LEASE,
                    "requeue_seconds": 3.0,
                    "connect_timeout_seconds": 1.0,
                },
                "workers": 1,
                "device": "cpu",
                "threads": 1,
                "poll_seconds": 0.1,
                "max_attempts": 3,
                "retry_backoff_seconds": 0,
                "plugins": ["tests.runner.faulty:Gated"],
            },
            routing={
                "rules": [
                    {
                        "name": "ct",
                        "match": {"series": {"Modality": {"equals": "CT"}}},
                        "pipeline": PIPELINE,
                        "destinations": ["pacs"],
                    }
                ]
            },
            destinations={
                "pacs": {
                    "type": "dicom",
                    "ae_title": "ORTHANC",
                    "host": "127.0.0.1",
                    "port": self.orthanc.dicom_port,
                    "timeout_seconds": 10,
                }
            },
            export={"poll_seconds": 0.2, "backoff_seconds": 1, "max_backoff_seconds": 2},
            monitoring={"enabled": False},
        )
        self.config_path = write_config(tmp_path / "site.yaml", self.config)
        self.node = node_process(self.config)
        self.store = SQLiteJobStore(store_of(self.config))
        self.workers: list[WorkerProcess] = []
        self.pushed = 0

    def worker(self, name: str, gate: Path | None) -> WorkerProcess:
        worker = WorkerProcess(self.config_path, name, self.tmp_path / f"{name}.log", gate)
        self.workers.append(worker)
        return worker

    def push(self, ct_series: Callable[..., Any], count: int) -> list[str]:
        """``count`` small CT studies over one association; their study UIDs."""
        first = self.pushed
        self.pushed += count
        series = [ct_series(slices=4, size=16, name=f"ct{i}") for i in range(first, self.pushed)]
        files = [path for s in series for path in s.paths]
        result = storescu(files, self.node.port)
        assert result.returncode == 0, result.stderr
        return [pydicom.dcmread(s.paths[0]).StudyInstanceUID for s in series]

    def runs(self) -> list[Job]:
        return [job for job in self.store.jobs() if job.kind == "run"]

    def wait_done(self, count: int, timeout: float = 180) -> list[Job]:
        def done() -> list[Job] | None:
            runs = self.runs()
            states = {job.state for job in runs}
            assert JobState.DEAD not in states, [(j.id, j.reason) for j in runs]
            return runs if len(runs) == count and states == {JobState.DONE} else None

        return wait_for(done, timeout, f"{count} run(s) DONE", interval=0.3)

    def assert_one_result_each(self, studies: list[str]) -> None:
        """Each study has exactly one SEG and one SR in Orthanc, each run wrote
        its results once and delivered each object once."""
        found = {}
        for orthanc_id in self.orthanc.get("/studies"):
            study = self.orthanc.get(f"/studies/{orthanc_id}")
            instances = self.orthanc.get(f"/studies/{orthanc_id}/instances")
            modalities = sorted(
                self.orthanc.get(f"/series/{i['ParentSeries']}")["MainDicomTags"]["Modality"]
                for i in instances
            )
            found[study["MainDicomTags"]["StudyInstanceUID"]] = modalities
        assert found == {uid: ["SEG", "SR"] for uid in studies}
        for run in self.runs():
            written = [
                t for t in self.store.history(run.id) if t.to_state == JobState.RESULTS_WRITTEN
            ]
            assert len(written) == 1, (run.id, self.store.history(run.id))
            assert [(i.state, i.attempts) for i in self.store.outbox(run.id)] == [
                ("DELIVERED", 1),
                ("DELIVERED", 1),
            ]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.node.stop()
        self.orthanc.stop()
        self.redis.stop()
        self.store.close()


@pytest.fixture
def site(tmp_path: Path, node_process: Callable[..., Any]) -> Iterator[Site]:
    built = Site(tmp_path, node_process)
    yield built
    built.stop()


def running_on(site: Site, count: int) -> Callable[[], list[Job] | None]:
    def check() -> list[Job] | None:
        runs = [job for job in site.runs() if job.state == JobState.RUNNING]
        return runs if len(runs) == count else None

    return check


def two_waiting_in_the_queue(site: Site) -> Callable[[], bool]:
    """Four runs: two RUNNING, two ROUTED and sent to the queue. A run in any
    other state (reclaimed, say) fails at once, naming every run's state."""

    def check() -> bool:
        runs = site.runs()
        seen = [(j.id, str(j.state), j.claimed_by, j.queued_at, j.attempts) for j in runs]
        assert all(j.state in (JobState.ROUTED, JobState.RUNNING) for j in runs), seen
        waiting = [j for j in runs if j.state == JobState.ROUTED]
        return len(runs) == 4 and len(waiting) == 2 and all(j.queued_at for j in waiting)

    return check


def test_a_burst_spreads_over_two_workers_and_each_study_gets_one_result(
    site: Site, ct_series: Callable[..., Any], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    site.worker("w1", gate)
    site.worker("w2", gate)
    studies = site.push(ct_series, 5)
    # with the gate closed each worker holds one run and reserves nothing more
    running = wait_for(running_on(site, 2), 90, "one run RUNNING on each worker")
    assert sorted(job.claimed_by or "" for job in running) == ["w1", "w2"]
    assert all(job.lease_until is not None for job in running)
    gate.touch()
    runs = site.wait_done(5)
    assert {job.claimed_by for job in runs} == {"w1", "w2"}
    assert all(job.attempts == 1 for job in runs)
    site.assert_one_result_each(studies)


def test_a_worker_killed_mid_run_has_its_run_reclaimed_and_rerun_by_the_other(
    site: Site, ct_series: Callable[..., Any], tmp_path: Path
) -> None:
    doomed = site.worker("w1", tmp_path / "never-opened")
    studies = site.push(ct_series, 1)
    (held,) = wait_for(running_on(site, 1), 90, "the run RUNNING on w1")
    assert held.claimed_by == "w1"
    site.worker("w2", None)
    doomed.signal_group(signal.SIGKILL)  # the host dies: no outcome, no ack
    doomed.proc.wait(timeout=30)
    (run,) = site.wait_done(1)
    assert (run.claimed_by, run.attempts) == ("w2", 2)
    moves = [(t.to_state, t.reason or "") for t in site.store.history(run.id)]
    running = [reason for state, reason in moves if state == JobState.RUNNING]
    assert running == ["on w1", "on w2"]
    (reclaim,) = [reason for state, reason in moves if state == JobState.FAILED_RETRYABLE]
    assert "w1 stopped renewing its lease" in reclaim
    site.assert_one_result_each(studies)


def test_a_broker_that_restarts_empty_loses_and_duplicates_nothing(
    site: Site, ct_series: Callable[..., Any], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    site.worker("w1", gate)
    site.worker("w2", gate)
    studies = site.push(ct_series, 4)
    # two runs on the workers, two more sent and waiting in Redis's queue
    wait_for(running_on(site, 2), 90, "one run RUNNING on each worker")
    wait_for(two_waiting_in_the_queue(site), 60, "two runs sent to the queue")
    site.redis.stop()  # the queued messages are gone with it
    gate.touch()  # the two running finish and are delivered without the broker
    wait_for(
        lambda: sum(job.state == JobState.DONE for job in site.runs()) == 2,
        90,
        "the two runs that were running to be DONE",
    )
    studies += site.push(ct_series, 1)  # routed while the broker is down: cannot be sent
    wait_for(
        lambda: "the broker cannot be reached" in site.node.log(),
        60,
        "the node to find the broker down",
    )
    site.redis.start()  # the same port, empty
    runs = site.wait_done(5)
    assert all(job.attempts == 1 for job in runs)
    site.assert_one_result_each(studies)


def test_a_paused_worker_that_resumes_after_the_rerun_delivers_nothing_twice(
    site: Site, ct_series: Callable[..., Any], tmp_path: Path
) -> None:
    """At least once: the first worker, stopped past its lease (a long pause, a
    partition), comes back after the run was re-run and delivered elsewhere;
    its outcome is not recorded and nothing is delivered again."""
    gate = tmp_path / "gate-w1"
    paused = site.worker("w1", gate)
    studies = site.push(ct_series, 1)
    (held,) = wait_for(running_on(site, 1), 90, "the run RUNNING on w1")
    assert held.claimed_by == "w1"
    paused.signal_group(signal.SIGSTOP)
    site.worker("w2", None)
    (run,) = site.wait_done(1)
    assert run.claimed_by == "w2"
    gate.touch()
    paused.signal_group(signal.SIGCONT)
    wait_for(
        lambda: (
            f"job {run.id}: w1 lost its lease" in paused.log()
            or f"job {run.id}: outcome not recorded" in paused.log()
        ),
        90,
        "w1 to find that it lost the run",
    )
    assert f"job {run.id}: {PIPELINE} finished" not in paused.log()
    assert site.store.get_job(run.id).state == JobState.DONE
    site.assert_one_result_each(studies)
