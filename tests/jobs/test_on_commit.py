"""Stage hand-offs are signalled: the job store calls its commit listeners
after a transaction that committed transitions, never after one rolled back,
and a stage's loop wakes on that signal instead of waiting for its next poll."""

from __future__ import annotations

import threading

import pytest

from dicomnode.errors import IllegalTransitionError
from dicomnode.jobs import InstanceRecord, JobState, SQLiteJobStore
from dicomnode.scheduling import Loop, Wakeup
from dicomnode.service import wake_on

#: far longer than any test waits: a pass that happens was woken, not polled
POLL = 3600.0
#: how long a test waits for a state it expects before failing
DEADLINE = 30.0


def record(sop: str, at: float) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=sop,
        series_instance_uid="1.2.826.0.1.1.1",
        study_instance_uid="1.2.826.0.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        path=f"/spool/{sop}.dcm",
        size=10,
        calling_ae="SCANNER",
        received_at=at,
    )


@pytest.fixture
def store(database: str) -> SQLiteJobStore:
    return SQLiteJobStore(database)


def test_a_committed_transition_calls_the_listener_with_the_new_states(
    store: SQLiteJobStore,
) -> None:
    seen: list[frozenset[JobState]] = []
    store.on_commit(seen.append)
    job_id = store.record_instance(record("1.1", 100.0)).job_id
    assert seen == [frozenset({JobState.RECEIVED})]
    store.record_instance(record("1.2", 101.0))  # joins the open round: no transition
    assert len(seen) == 1
    assert store.complete_due(200.0, 30.0, 600.0) == [job_id]
    assert seen[-1] == frozenset({JobState.COMPLETE})
    store.transition(job_id, JobState.ROUTED)
    assert seen[-1] == frozenset({JobState.ROUTED})
    assert [t.to_state for t in store.history(job_id)] == [
        JobState.RECEIVED,
        JobState.COMPLETE,
        JobState.ROUTED,
    ]


def test_a_rolled_back_transition_calls_nothing(store: SQLiteJobStore) -> None:
    job_id = store.record_instance(record("1.1", 100.0)).job_id
    seen: list[frozenset[JobState]] = []
    store.on_commit(seen.append)
    with pytest.raises(IllegalTransitionError):
        store.transition(job_id, JobState.DONE)
    # a transition recorded inside a transaction that then fails
    with pytest.raises(RuntimeError, match="after the transition"):
        with store._write() as cur:
            cur.execute("UPDATE jobs SET state = ? WHERE id = ?", (str(JobState.COMPLETE), job_id))
            store._add_transition(cur, job_id, JobState.RECEIVED, JobState.COMPLETE, 1.0, None)
            raise RuntimeError("after the transition")
    assert seen == []
    assert store.get_job(job_id).state == JobState.RECEIVED
    assert len(store.history(job_id)) == 1
    # and the next commit reports only its own transition
    store.transition(job_id, JobState.COMPLETE)
    assert seen == [frozenset({JobState.COMPLETE})]


def test_a_signal_given_before_the_wait_is_not_lost() -> None:
    wakeup = Wakeup()
    assert wakeup.wait(0) is False
    wakeup.set()
    wakeup.set()
    assert wakeup.wait(POLL) is True  # returns at once: it was set before
    assert wakeup.wait(0) is False  # both signals consumed by that wait
    wakeup.close()
    wakeup.set()  # after close: ignored, not an error


def test_a_commit_wakes_the_stage_that_waits_for_that_state(store: SQLiteJobStore) -> None:
    passes: list[int] = []
    first, woken = threading.Event(), threading.Event()

    def one_pass() -> None:
        passes.append(len(store.jobs(state=JobState.COMPLETE)))
        first.set()
        if passes[-1]:
            woken.set()

    loop = Loop("test-router", one_pass, POLL, lambda exc: None)
    wake_on(store, frozenset({JobState.COMPLETE}), loop.wakeup)
    loop.start()
    try:
        assert first.wait(DEADLINE), "the first pass did not run"
        job_id = store.record_instance(record("1.1", 100.0)).job_id
        assert store.complete_due(200.0, 30.0, 600.0) == [job_id]
        assert woken.wait(DEADLINE), f"the loop was not woken (passes: {passes})"
    finally:
        loop.stop()
    assert not loop.alive()
    assert passes[0] == 0 and passes[-1] == 1
