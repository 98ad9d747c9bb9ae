"""The job store's part of the admin layer: holds, discards, the audit trail."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from dicomnode.errors import IllegalTransitionError, JobStoreError
from dicomnode.jobs import AuditEntry, AuditEvent, JobState, RunSpec, SQLiteJobStore
from dicomnode.protocol import ResultObject
from tests.jobs.test_store import MAX_WAIT, QUIET, STUDY, Clock, record


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> SQLiteJobStore:
    return SQLiteJobStore(tmp_path / "jobs.db", clock=clock)


def _routed(store: SQLiteJobStore, clock: Clock) -> tuple[int, int]:
    round_id = store.record_instance(record("1.1", clock.now)).job_id
    clock.now += QUIET
    store.complete_due(clock.now, QUIET, MAX_WAIT)
    (run_id,) = store.route(round_id, [RunSpec("lungs", "ct-lung", "1.2.826.0.1.1.1")], "m")
    return round_id, run_id


def test_a_held_run_is_not_claimed_until_released(store: SQLiteJobStore, clock: Clock) -> None:
    _, run_id = _routed(store, clock)
    held = store.hold_job(run_id, "alice")
    assert (held.state, held.held_by) == (JobState.ROUTED, "alice")
    assert store.claim_runs(clock.now, 10) == []
    assert store.runs_to_queue(clock.now, 60, 10) == []
    assert store.claim_run(run_id, "w1", clock.now, 30) is None
    with pytest.raises(IllegalTransitionError, match="already held"):
        store.hold_job(run_id, "bob")
    released = store.release_job(run_id)
    assert released.held_at is None
    assert [j.id for j in store.claim_runs(clock.now, 10)] == [run_id]
    with pytest.raises(IllegalTransitionError, match="RUNNING: only a job in"):
        store.hold_job(run_id, "alice")  # on a worker now
    with pytest.raises(IllegalTransitionError, match="not held"):
        store.release_job(run_id)


def test_a_held_round_is_not_routed(store: SQLiteJobStore, clock: Clock) -> None:
    round_id = store.record_instance(record("1.1", clock.now)).job_id
    store.hold_job(round_id, "alice")
    clock.now += QUIET
    store.complete_due(clock.now, QUIET, MAX_WAIT)  # completes; routing waits
    with pytest.raises(IllegalTransitionError, match="held"):
        store.route(round_id, [], "no rule matched")
    store.release_job(round_id)
    assert store.route(round_id, [], "no rule matched") == []
    assert store.get_job(round_id).state == JobState.DISCARDED


def test_discard_only_where_nothing_is_lost(store: SQLiteJobStore, clock: Clock) -> None:
    _, run_id = _routed(store, clock)
    with pytest.raises(IllegalTransitionError, match="ROUTED and it is not held"):
        store.discard_job(run_id, "by alice")
    assert store.get_job(run_id).state == JobState.ROUTED
    store.hold_job(run_id, "alice")
    discarded = store.discard_job(run_id, "by alice")
    assert (discarded.state, discarded.held_at) == (JobState.DISCARDED, None)
    assert store.history(run_id)[-1].reason == "by alice"
    with pytest.raises(IllegalTransitionError, match="nothing to discard"):
        store.discard_job(run_id, "again")


def test_the_audit_trail_is_append_only(store: SQLiteJobStore, tmp_path: Path) -> None:
    first = store.record_audit(
        AuditEntry(
            AuditEvent.INSTANCES_STORED,
            "SCANNER",
            study_instance_uid="1.2.3",
            patient_id="PID-1",
            accession_number="ACC-1",
            detail={"instances": 3},
        )
    )
    second = store.record_audit(AuditEntry(AuditEvent.ADMIN_ACTION, "alice", "hold", "job 1"))
    assert second == first + 1 == store.last_audit_id()
    rows = store.audit_records(patient_id="PID-1")
    assert [(r.entry.study_instance_uid, r.entry.detail) for r in rows] == [
        ("1.2.3", {"instances": 3})
    ]
    assert [r.id for r in store.audit_records(oldest_first=True)] == [first, second]
    raw = sqlite3.connect(tmp_path / "jobs.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("UPDATE audit SET actor = 'mallory' WHERE id = ?", (first,))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("DELETE FROM audit")
    raw.close()
    with pytest.raises(JobStoreError, match="append-only"):
        with store._write() as cur:
            cur.execute("DELETE FROM audit WHERE id = ?", (second,))
    assert len(store.audit_records()) == 2


def test_a_held_run_is_not_delivered_until_released(store: SQLiteJobStore, clock: Clock) -> None:
    seg = ResultObject("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "9.1", STUDY, "9.2", Path("/o/s"))
    round_id = store.record_instance(record("1.1", clock.now)).job_id
    clock.now += QUIET
    store.complete_due(clock.now, QUIET, MAX_WAIT)
    spec = RunSpec("lungs", "ct-lung", "1.2.826.0.1.1.1", ("pacs",))
    (run_id,) = store.route(round_id, [spec], "matched")
    store.claim_runs(clock.now, 1)
    store.finish_run(run_id, "/r", "done", (seg,))
    store.hold_job(run_id, "alice")
    assert store.start_exports() == []  # RESULTS_WRITTEN, held: not exported
    store.release_job(run_id)
    assert store.start_exports() == [run_id]
    store.hold_job(run_id, "alice")  # EXPORTING, held: nothing due
    assert store.due_deliveries(clock.now) == []
    store.release_job(run_id)
    assert [i.destination for i in store.due_deliveries(clock.now)] == ["pacs"]
    (written,) = store.audit_records(event=str(AuditEvent.RESULTS_WRITTEN))
    assert (written.entry.target, written.entry.study_instance_uid) == (f"job {run_id}", STUDY)
    assert written.entry.detail["objects"] == [{"type": "SEG", "sop_instance_uid": "9.1"}]


@pytest.mark.postgres
def test_the_audit_trail_is_append_only_on_postgresql(postgres_url: str) -> None:
    store = SQLiteJobStore(postgres_url)
    first = store.record_audit(AuditEntry(AuditEvent.ADMIN_ACTION, "alice", "hold", "job 1"))
    store.close()
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as raw:
        for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                raw.execute(statement)
        assert raw.execute("SELECT id, actor FROM audit").fetchall() == [(first, "alice")]
