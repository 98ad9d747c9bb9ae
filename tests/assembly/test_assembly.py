"""Study completion: quiet period, maximum wait, late rounds, restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dicomnode.assembly import Assembler
from dicomnode.config import AssemblyConfig
from dicomnode.jobs import InstanceRecord, JobState, SQLiteJobStore
from tests.conftest import open_store, wait_for_state
from tests.helpers import node_config, store_of, store_statuses, storescu, wait_for


def _record(sop: str, at: float) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=sop,
        series_instance_uid="1.2.3.4",
        study_instance_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        path=f"/x/{sop}.dcm",
        size=1,
        calling_ae="SCANNER",
        received_at=at,
    )


def test_a_restarted_assembler_completes_pending_rounds_once(tmp_path: Path) -> None:
    config = AssemblyConfig(quiet_seconds=10, max_wait_seconds=100)
    store = SQLiteJobStore(tmp_path / "jobs.db")
    job_id = store.record_instance(_record("1.1", 1000.0)).job_id
    assert Assembler(config, store, clock=lambda: 1005.0).run_once() == []
    store.close()
    # "restart": a new store and assembler on the same file, after the deadline
    reopened = SQLiteJobStore(tmp_path / "jobs.db")
    later = Assembler(config, reopened, clock=lambda: 1011.0)
    assert later.run_once() == [job_id]
    assert later.run_once() == []
    assert [t.to_state for t in reopened.history(job_id)].count(JobState.COMPLETE) == 1


@pytest.mark.peers
def test_one_study_over_three_associations_with_short_gaps(make_settings, start_node, ct_series):
    settings = make_settings(assembly={"quiet_seconds": 3, "poll_seconds": 0.1})
    start_node(settings)
    series = ct_series(slices=12, size=16)
    for part in (series.paths[:4], series.paths[4:8], series.paths[8:]):
        result = storescu(part, settings.node.port)
        assert store_statuses(result.stderr) == ["Success"] * 4
    store = open_store(settings)
    assert [j.state for j in store.jobs()] == [JobState.RECEIVED]
    (job,) = wait_for_state(store, series.study_uid, JobState.COMPLETE, timeout=20)
    assert (job.round, job.instance_count) == (1, 12)
    assert len(store.jobs()) == 1
    transitions = store.history(job.id)
    assert [t.to_state for t in transitions][:2] == [JobState.RECEIVED, JobState.COMPLETE]
    assert transitions[1].at - job.last_instance_at >= 3.0


@pytest.mark.peers
def test_gaps_longer_than_the_quiet_period_open_new_rounds(make_settings, start_node, ct_series):
    # quiet long enough that one storescu push never splits, even on a loaded machine
    settings = make_settings(assembly={"quiet_seconds": 2.5, "poll_seconds": 0.1})
    start_node(settings)
    series = ct_series(slices=9, size=16)
    store = open_store(settings)
    for round_no, part in enumerate((series.paths[:3], series.paths[3:6], series.paths[6:]), 1):
        assert store_statuses(storescu(part, settings.node.port).stderr) == ["Success"] * 3

        def settled(n: int = round_no) -> bool:
            # COMPLETE is passed through on the way to DISCARDED (no rules): wait for the end
            rounds = store.jobs(study_instance_uid=series.study_uid)
            return sum(j.state == JobState.DISCARDED for j in rounds) == n

        wait_for(settled, 20, f"round {round_no} to complete and be discarded")
    jobs = sorted(store.jobs(study_instance_uid=series.study_uid), key=lambda j: j.round)
    assert [(j.round, j.instance_count) for j in jobs] == [(1, 3), (2, 3), (3, 3)]
    for job in jobs:  # each round completed once, then (no rules) discarded
        assert [t.to_state for t in store.history(job.id)] == [
            JobState.RECEIVED,
            JobState.COMPLETE,
            JobState.DISCARDED,
        ]
    assert sorted(r.sop_instance_uid for r in store.instances(series.study_uid)) == sorted(
        series.sop_uids
    )
    studies = store.studies()
    assert [(s.instance_count, s.rounds) for s in studies] == [(9, 3)]


@pytest.mark.peers
def test_max_wait_completes_a_study_that_is_never_quiet(make_settings, start_node, ct_series):
    settings = make_settings(
        assembly={"quiet_seconds": 4, "max_wait_seconds": 5, "poll_seconds": 0.1}
    )
    start_node(settings)
    series = ct_series(slices=14, size=16)
    store = open_store(settings)
    # one slice every 0.5 s for 7 s: never quiet for 4 s, even when a push is slow
    for path in series.paths:
        assert store_statuses(storescu([path], settings.node.port).stderr) == ["Success"]
        time.sleep(0.5)
    first = min(store.jobs(study_instance_uid=series.study_uid), key=lambda j: j.round)
    history = store.history(first.id)
    assert history[1].to_state == JobState.COMPLETE
    assert "maximum wait" in (history[1].reason or "")
    assert history[1].at - history[0].at == pytest.approx(5.0, abs=1.0)
    total = sum(j.instance_count for j in store.jobs(study_instance_uid=series.study_uid))
    assert total == 14


@pytest.mark.peers
@pytest.mark.slow
def test_pending_study_resumes_its_timer_after_a_restart(node_process, tmp_path, ct_series):
    config = node_config(tmp_path, assembly={"quiet_seconds": 4, "poll_seconds": 0.1})
    node = node_process(config)
    series = ct_series(slices=5, size=16)
    assert store_statuses(storescu(series.paths, node.port).stderr) == ["Success"] * 5
    assert node.terminate() == 0
    store = SQLiteJobStore(store_of(config))
    (job,) = store.jobs()
    assert job.state == JobState.RECEIVED
    node_process(config)
    (done,) = wait_for_state(store, series.study_uid, JobState.COMPLETE, timeout=30)
    assert done.id == job.id and done.instance_count == 5
    history = store.history(job.id)
    assert [t.to_state for t in history][:2] == [JobState.RECEIVED, JobState.COMPLETE]
    assert history[1].at >= job.last_instance_at + 4
