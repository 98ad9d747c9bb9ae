"""Runs on workers elsewhere: the queue marks, leased claims, reclaims, and one
outcome per claim, so a run executed twice is delivered once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from dicomnode.errors import IllegalTransitionError, LeaseLostError
from dicomnode.jobs import JobState, RunSpec, SQLiteJobStore
from dicomnode.protocol import ResultObject
from tests.helpers import wait_for
from tests.jobs.test_store import MAX_WAIT, QUIET, STUDY, Clock, record

SEG = ResultObject("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "9.1", STUDY, "9.2", Path("/o/s"))
LEASE = 10.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database: str, clock: Clock) -> SQLiteJobStore:
    return SQLiteJobStore(database, clock=clock)


def routed(store: SQLiteJobStore, clock: Clock, sop: str = "1.1") -> int:
    """A ROUTED ct-lung run with one PACS destination."""
    round_id = store.record_instance(record(sop, clock.now)).job_id
    clock.now += QUIET
    store.complete_due(clock.now, QUIET, MAX_WAIT)
    (run_id,) = store.route(round_id, [RunSpec("lungs", "ct-lung", "1.2.3", ("pacs",))], "m")
    return run_id


def deliver(store: SQLiteJobStore) -> None:
    store.start_exports()
    for item in store.due_deliveries(float("inf")):
        store.record_delivery([item.id], "DELIVERED")
    store.settle_exports()


def test_a_second_completion_of_a_delivered_run_queues_nothing(
    store: SQLiteJobStore, clock: Clock
) -> None:
    """DONE → RESULTS_WRITTEN is legal (a replay), but it is no completion: the
    same task finishing again must not queue its objects a second time."""
    run = routed(store, clock)
    store.claim_runs(clock.now, 1)
    store.finish_run(run, "/r", "first", (SEG,))
    deliver(store)
    assert store.get_job(run).state == JobState.DONE
    with pytest.raises(LeaseLostError, match="already recorded"):
        store.finish_run(run, "/r", "again", (SEG,))
    with pytest.raises(LeaseLostError):
        store.fail_run(run, "late failure", None, clock.now)
    assert store.get_job(run).state == JobState.DONE
    assert [(i.state, i.attempts) for i in store.outbox(run)] == [("DELIVERED", 1)]
    to_results = [t for t in store.history(run) if t.to_state == JobState.RESULTS_WRITTEN]
    assert len(to_results) == 1


def test_a_worker_that_lost_its_lease_cannot_record_and_the_holder_can(
    store: SQLiteJobStore, clock: Clock
) -> None:
    run = routed(store, clock)
    held = store.claim_run(run, "w1#0", clock.now, LEASE)
    assert held is not None
    assert (held.state, held.claimed_by, held.lease_until, held.attempts) == (
        JobState.RUNNING,
        "w1#0",
        clock.now + LEASE,
        1,
    )
    assert store.claim_run(run, "w2#0", clock.now, LEASE) is None  # the message twice
    clock.now += LEASE / 2
    assert store.renew_lease(run, "w1#0", clock.now + LEASE)
    assert store.expired_leases(clock.now + LEASE / 2) == []
    with pytest.raises(LeaseLostError, match="has not expired"):
        store.fail_run(run, "reclaim", None, clock.now, claimant="w1#0", expired_at=clock.now)
    clock.now += LEASE + 1  # w1 stopped renewing (killed, or paused)
    (expired,) = store.expired_leases(clock.now)
    assert expired.id == run
    store.fail_run(
        run, "lease of w1#0 expired", None, clock.now, claimant="w1#0", expired_at=clock.now
    )
    assert store.get_job(run).state == JobState.FAILED_RETRYABLE
    assert store.claim_run(run, "w2#0", clock.now, LEASE) is not None
    assert not store.renew_lease(run, "w1#0", clock.now + LEASE)
    with pytest.raises(LeaseLostError, match="held by w2#0, not w1#0"):
        store.finish_run(run, "/r", "late", (SEG,), claimant="w1#0")
    assert store.outbox(run) == []
    done = store.finish_run(run, "/r", "in time", (SEG,), claimant="w2#0")
    assert (done.state, done.attempts, done.lease_until) == (JobState.RESULTS_WRITTEN, 2, None)
    assert len(store.outbox(run)) == 1


def test_a_claim_takes_only_a_due_run(store: SQLiteJobStore, clock: Clock) -> None:
    run = routed(store, clock)
    assert store.claim_run(run - 1, "w1#0", clock.now, LEASE) is None  # the study round
    assert store.claim_run(run, "w1#0", clock.now, LEASE) is not None
    store.fail_run(run, "boom", None, clock.now + 30, claimant="w1#0")
    assert store.claim_run(run, "w1#0", clock.now, LEASE) is None  # backing off
    clock.now += 30
    assert store.claim_run(run, "w1#0", clock.now, LEASE) is not None
    store.fail_run(run, "boom", None, None, claimant="w1#0")
    assert store.claim_run(run, "w1#0", clock.now, LEASE) is None  # DEAD
    with pytest.raises(IllegalTransitionError):
        store.finish_run(run, "/r", "x", (), claimant="w1#0")


def test_runs_are_queued_once_and_again_only_when_unclaimed_for_long(
    store: SQLiteJobStore, clock: Clock
) -> None:
    run = routed(store, clock)
    assert [j.id for j in store.runs_to_queue(clock.now, 60, 10)] == [run]
    store.mark_queued(run, clock.now)
    assert store.runs_to_queue(clock.now + 59, 60, 10) == []
    assert [j.id for j in store.runs_to_queue(clock.now + 60, 60, 10)] == [run]  # lost message
    store.claim_run(run, "w1#0", clock.now, LEASE)
    assert store.get_job(run).queued_at is None
    assert store.runs_to_queue(clock.now + 600, 60, 10) == []  # RUNNING
    store.fail_run(run, "boom", None, clock.now + 5, claimant="w1#0")
    assert store.runs_to_queue(clock.now, 60, 10) == []  # not due yet
    assert [j.id for j in store.runs_to_queue(clock.now + 5, 60, 10)] == [run]


@pytest.mark.postgres
def test_a_claim_waits_for_a_row_another_transaction_holds(postgres_url: str, clock: Clock) -> None:
    """A worker's message arrives while a receiver's transaction holds the run's
    row (marking it queued a second time): the claim waits for it and takes the
    run, instead of dropping the message and leaving the run to be queued again
    minutes later."""
    store = SQLiteJobStore(postgres_url, clock=clock)
    run = routed(store, clock)
    engine = sa.create_engine(postgres_url)
    claimed: list[object] = []
    try:
        with engine.connect() as holder, engine.connect() as observer:
            holder.execute(sa.text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": run})
            claim = threading.Thread(
                target=lambda: claimed.append(store.claim_run(run, "w1#0", clock.now, LEASE))
            )
            claim.start()

            def blocked() -> bool:
                assert not claimed, "the claim returned while another transaction held the row"
                query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                return bool(observer.execute(sa.text(query)).scalar())

            wait_for(blocked, 30, "the claim to wait for the row lock")
            holder.rollback()
            claim.join(30)
    finally:
        engine.dispose()
    (held,) = claimed
    assert held is not None and held.state == JobState.RUNNING
