"""The SQLite job store: rounds, duplicates, completion exactly once, transitions."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from dicomnode.errors import IllegalTransitionError, NotFoundError
from dicomnode.jobs import (
    TRANSITIONS,
    InstanceRecord,
    JobState,
    Run,
    RunSpec,
    SQLiteJobStore,
    StudyRound,
)
from dicomnode.protocol import ResultMessage, ResultObject

STUDY = "1.2.826.0.1.1"
QUIET, MAX_WAIT = 30.0, 600.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(
    sop: str, at: float, study: str = STUDY, series: str = "1.2.826.0.1.1.1"
) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=sop,
        series_instance_uid=series,
        study_instance_uid=study,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        path=f"/spool/{sop}.dcm",
        size=10,
        calling_ae="SCANNER",
        received_at=at,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database: str, clock: Clock) -> SQLiteJobStore:
    return SQLiteJobStore(database, clock=clock)


def test_wal_mode(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_instances_of_a_study_share_one_round(store: SQLiteJobStore) -> None:
    first = store.record_instance(record("1.1", 100.0))
    second = store.record_instance(record("1.2", 101.0))
    assert first.new_round and not second.new_round
    assert first.job_id == second.job_id
    job = store.get_job(first.job_id)
    assert (job.state, job.round, job.instance_count) == (JobState.RECEIVED, 1, 2)
    assert job.last_instance_at == 101.0


def test_duplicate_is_counted_not_processed(store: SQLiteJobStore) -> None:
    first = store.record_instance(record("1.1", 100.0))
    again = store.record_instance(record("1.1", 105.0))
    assert again.duplicate and again.kept_path == "/spool/1.1.dcm"
    assert store.duplicates("1.1") == 1
    job = store.get_job(first.job_id)
    assert job.instance_count == 1
    assert job.last_instance_at == 100.0  # a duplicate does not extend the quiet period
    store.complete_due(100.0 + QUIET, QUIET, MAX_WAIT)
    late = store.record_instance(record("1.1", 500.0))
    assert late.duplicate and late.job_id == first.job_id
    assert len(store.jobs()) == 1


def test_quiet_period_completes_exactly_once(store: SQLiteJobStore) -> None:
    job_id = store.record_instance(record("1.1", 100.0)).job_id
    store.record_instance(record("1.2", 120.0))
    assert store.complete_due(100.0 + QUIET + 1, QUIET, MAX_WAIT) == []  # reset by 1.2
    assert store.next_due(QUIET, MAX_WAIT) == 120.0 + QUIET
    assert store.complete_due(120.0 + QUIET, QUIET, MAX_WAIT) == [job_id]
    assert store.complete_due(999_999.0, QUIET, MAX_WAIT) == []
    history = store.history(job_id)
    assert [(t.from_state, t.to_state) for t in history] == [
        (None, JobState.RECEIVED),
        (JobState.RECEIVED, JobState.COMPLETE),
    ]
    assert history[0].at == 100.0 and history[1].at == 120.0 + QUIET
    assert "quiet" in (history[1].reason or "")


def test_max_wait_bounds_a_study_that_keeps_arriving(store: SQLiteJobStore) -> None:
    job_id = store.record_instance(record("1.0", 0.0)).job_id
    for i in range(1, 40):
        at = i * 20.0
        store.record_instance(record(f"1.{i}", at))
        completed = store.complete_due(at, QUIET, MAX_WAIT)
        if at < MAX_WAIT:
            assert completed == []
        else:
            assert completed == [job_id]
            break
    assert "maximum wait" in (store.get_job(job_id).reason or "")


def test_late_instance_opens_a_new_recorded_round(store: SQLiteJobStore) -> None:
    first = store.record_instance(record("1.1", 100.0))
    store.complete_due(200.0, QUIET, MAX_WAIT)
    late = store.record_instance(record("1.2", 300.0))
    assert late.new_round and late.job_id != first.job_id
    rounds = sorted(
        (j.round, j.state, j.instance_count) for j in store.jobs(study_instance_uid=STUDY)
    )
    assert rounds == [(1, JobState.COMPLETE, 1), (2, JobState.RECEIVED, 1)]
    assert store.get_job(first.job_id).instance_count == 1
    studies = store.studies()
    assert [(s.instance_count, s.rounds, s.latest_state) for s in studies] == [
        (2, 2, JobState.RECEIVED)
    ]


def test_the_whole_happy_path_is_legal_and_timestamped(store: SQLiteJobStore, clock: Clock) -> None:
    job_id = store.record_instance(record("1.1", clock.now)).job_id
    clock.now += QUIET
    store.complete_due(clock.now, QUIET, MAX_WAIT)
    path = [
        JobState.ROUTED,
        JobState.RUNNING,
        JobState.RESULTS_WRITTEN,
        JobState.EXPORTING,
        JobState.DONE,
    ]
    for step, state in enumerate(path):
        clock.now += 10.0 * (step + 1)
        assert store.transition(job_id, state).state == state
    history = store.history(job_id)
    assert [t.to_state for t in history][2:] == path
    times = [t.at for t in history]
    assert times == sorted(times)
    assert store.get_job(job_id).updated_at == clock.now


def test_illegal_transitions_raise_and_change_nothing(store: SQLiteJobStore) -> None:
    job_id = store.record_instance(record("1.1", 1.0)).job_id
    with pytest.raises(IllegalTransitionError, match="RECEIVED cannot move to DONE"):
        store.transition(job_id, JobState.DONE)
    with pytest.raises(IllegalTransitionError, match="expected COMPLETE"):
        store.transition(job_id, JobState.COMPLETE, expected=JobState.COMPLETE)
    assert store.get_job(job_id).state == JobState.RECEIVED
    assert len(store.history(job_id)) == 1
    with pytest.raises(NotFoundError):
        store.transition(9999, JobState.COMPLETE)


def test_every_state_is_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert JobState.RECEIVED not in {t for targets in TRANSITIONS.values() for t in targets}


def test_state_survives_reopening(database: str) -> None:
    store = SQLiteJobStore(database)
    job_id = store.record_instance(record("1.1", 100.0)).job_id
    store.close()
    reopened = SQLiteJobStore(database)
    assert reopened.get_job(job_id).state == JobState.RECEIVED
    assert reopened.has_instance("1.1")
    assert reopened.next_due(QUIET, MAX_WAIT) == 100.0 + QUIET


def test_a_database_from_before_retention_gets_its_columns(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    job_id = store.record_instance(record("1.1", 100.0)).job_id
    store.close()
    old = sqlite3.connect(tmp_path / "jobs.db")  # as schema version 2 left it
    old.execute("DROP TABLE alembic_version")
    old.execute("DROP INDEX jobs_study")
    old.execute("ALTER TABLE jobs DROP COLUMN purged_at")
    old.execute("ALTER TABLE jobs DROP COLUMN outbox_dir")
    old.commit()
    old.close()
    reopened = SQLiteJobStore(tmp_path / "jobs.db")
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    assert {"purged_at", "outbox_dir"} <= columns
    job = reopened.get_job(job_id)
    assert (job.state, job.purged_at) == (JobState.RECEIVED, None)
    assert reopened.expired_studies(10_000.0) == []  # a RECEIVED round is never expired


def _run(store: SQLiteJobStore, clock: Clock, sop: str) -> int:
    """A ct-lung run of one round of the series (RUNNING), with a PACS and a RIS."""
    round_id = store.record_instance(record(sop, clock.now)).job_id
    clock.now += QUIET
    store.complete_due(clock.now, QUIET, MAX_WAIT)
    spec = RunSpec(
        "lungs", "ct-lung", "1.2.826.0.1.1.1", ("pacs",), ("ris", "gone"), result_status="final"
    )
    (run_id,) = store.route(round_id, [spec], "matched")
    store.claim_runs(clock.now, 1)
    return run_id


def test_a_round_and_a_run_come_back_as_their_own_records(
    store: SQLiteJobStore, clock: Clock
) -> None:
    """A study round is a StudyRound, a run a Run carrying its pipeline and
    round; asking for a round as a run names what it is."""
    run_id = _run(store, clock, "1.1")
    (run, round_) = store.jobs(study_instance_uid=STUDY)
    assert isinstance(round_, StudyRound) and round_.kind == "study"
    assert isinstance(run, Run) and run.kind == "run"
    assert (run.id, run.parent_id, run.pipeline, run.rule) == (
        run_id,
        round_.id,
        "ct-lung",
        "lungs",
    )
    assert (run.destinations, run.notify, run.result_status) == (
        ("pacs",),
        ("ris", "gone"),
        "final",
    )
    assert not hasattr(round_, "pipeline")
    assert store.get_run(run_id) == run
    with pytest.raises(NotFoundError, match="study round, not a pipeline run"):
        store.get_run(round_.id)
    assert [j.id for j in store.open_rounds()] == []


def test_the_outbox_holds_what_the_writer_made(store: SQLiteJobStore, clock: Clock) -> None:
    """Objects with their UIDs, one message per notify name (none for a name
    the writer built nothing for); a destination that got a result before
    makes the next result of the series a correction."""
    seg = ResultObject("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "9.1", STUDY, "9.2", Path("/o/s"))
    message = ResultMessage("ris", "DN2-ABCD", "MSH|^~\\&|...", ("9.1",))
    first = _run(store, clock, "1.1")
    assert store.get_job(first).result_status == "final"
    assert store.notified_before(first) == set()
    store.finish_run(first, "/r", "done", (seg,), (message,))
    rows = {i.destination: i for i in store.outbox(first)}
    assert (rows["pacs"].kind, rows["pacs"].sop_instance_uid, rows["pacs"].path) == (
        "dicom",
        "9.1",
        "/o/s",
    )
    assert (rows["ris"].body, rows["ris"].refers_to, rows["ris"].path) == (
        message.body,
        ("9.1",),
        "",
    )
    assert (rows["gone"].kind, rows["gone"].body) == ("notification", None)
    store.start_exports()
    store.record_delivery([rows["ris"].id], "DELIVERED")
    store.record_delivery([rows["gone"].id], "DEAD", "held back", attempted=False)
    assert {i.destination: i.attempts for i in store.outbox(first)} == {
        "pacs": 0,
        "ris": 1,
        "gone": 0,
    }
    second = _run(store, clock, "1.2")  # the series again, in a new round
    assert store.notified_before(second) == {"ris"}


#: The job store's schema as release 0.1.0 (schema version 3) created it, copied
#: from dicomnode/jobs/sqlite.py at that release.
SCHEMA_3 = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    round INTEGER NOT NULL,
    parent_id INTEGER REFERENCES jobs(id),
    state TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    opened_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    updated_at REAL NOT NULL,
    pipeline TEXT,
    series_instance_uid TEXT,
    rule TEXT,
    destinations TEXT NOT NULL DEFAULT '[]',
    notify TEXT NOT NULL DEFAULT '[]',
    priority INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    traceback TEXT,
    result_dir TEXT,
    outbox_dir TEXT,
    purged_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_study_round
    ON jobs (study_instance_uid, round) WHERE kind = 'study';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    from_state TEXT,
    to_state TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    duplicates INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'PENDING',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (job_id, destination, path)
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS instances_job ON instances (job_id);

CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_instance_uid, purged_at);
"""


def test_a_database_of_schema_version_3_opens_and_is_upgraded_in_place(tmp_path: Path) -> None:
    """A file written by the previous release, with a run caught mid-export,
    opens with typed outbox rows; its notification, queued without a message,
    ends DEAD with the way out, and a hand retry runs the pipeline again."""
    path = tmp_path / "jobs.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_3)
    old.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '3')")
    old.execute(
        "INSERT INTO jobs (id, kind, study_instance_uid, round, state, opened_at, "
        "last_instance_at, updated_at) VALUES (1, 'study', ?, 1, 'ROUTED', 1, 1, 1)",
        (STUDY,),
    )
    old.execute(
        "INSERT INTO jobs (id, kind, study_instance_uid, round, parent_id, state, opened_at, "
        "last_instance_at, updated_at, pipeline, series_instance_uid, rule, destinations, "
        "notify, result_dir, outbox_dir) VALUES (2, 'run', ?, 1, 1, 'EXPORTING', 1, 1, 1, "
        "'ct-lung', '1.2.3', 'lungs', '[\"pacs\"]', '[\"ris\"]', '/r/job-2', '/o/job-2')",
        (STUDY,),
    )
    old.executemany(
        "INSERT INTO outbox (job_id, destination, kind, path, created_at, updated_at) "
        "VALUES (2, ?, ?, ?, 1, 1)",
        [("pacs", "dicom", "/o/job-2/SEG_1.2.3.4.dcm"), ("ris", "notification", "/r/job-2")],
    )
    old.commit()
    old.close()

    store = SQLiteJobStore(path, clock=Clock(1000.0))
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == "8"
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == (
            "0001_schema_8"
        )
    # version 6: an old run is a production run that flags out-of-range input
    assert (store.get_job(2).shadow, store.get_job(2).out_of_range) == (False, "flag")
    assert store.agreements() == [] and store.corrections() == [] and store.promotions() == []
    assert store.descriptors("ct-lung") == []  # the descriptors table came with version 5
    store.record_descriptors(2, "ct-lung", '{"input": {}}')
    assert [(job, text) for _, job, _, text in store.descriptors("ct-lung")] == [
        (2, '{"input": {}}')
    ]
    assert store.descriptor_pipelines() == ["ct-lung"]
    run = store.get_job(2)
    assert (run.claimed_by, run.lease_until, run.queued_at) == (None, None, None)  # version 6
    assert (run.state, run.result_status, run.notify_after) == (
        JobState.EXPORTING,
        "preliminary",
        "delivered",
    )
    dicom, notification = store.outbox(2)
    assert (dicom.kind, dicom.path, dicom.sop_instance_uid, dicom.body) == (
        "dicom",
        "/o/job-2/SEG_1.2.3.4.dcm",
        None,
        None,
    )
    assert (notification.kind, notification.body, notification.refers_to) == (
        "notification",
        None,
        (),
    )
    assert [i.id for i in store.due_deliveries(1000.0)] == [dicom.id, notification.id]
    assert store.notified_before(2) == set()
    store.record_delivery([dicom.id], "DELIVERED")
    store.record_delivery([notification.id], "DEAD", "no message was built")
    (dead,) = store.settle_exports()
    assert dead.state == JobState.DEAD
    assert store.retry(2).state == JobState.ROUTED  # a re-run builds the message
    store.close()
    assert SQLiteJobStore(path).get_job(2).state == JobState.ROUTED  # opens again as it is


def test_descriptors_come_back_by_window(database: str) -> None:
    clock = Clock(1000.0)
    store = SQLiteJobStore(database, clock=clock)
    for job in range(1, 7):
        store.record_descriptors(job, "ct-lung" if job % 3 else "cxr", f'{{"n": {job}}}')
        clock.now += 10

    def jobs(**window: object) -> list[int]:
        return [job for _, job, _, _ in store.descriptors("ct-lung", **window)]  # type: ignore[arg-type]

    assert jobs() == [1, 2, 4, 5]
    assert jobs(first=2) == [1, 2]
    assert jobs(last=2) == [4, 5]
    assert jobs(since=1030.0) == [4, 5]
    assert jobs(since=1000.0, until=1030.0) == [1, 2]
    assert store.descriptors("ct-lung", first=1)[0][3] == '{"n": 1}'
    assert store.descriptor_pipelines() == ["ct-lung", "cxr"]


def test_conflicting_duplicates_are_counted_per_instance_and_study(database: str) -> None:
    store = SQLiteJobStore(database)
    store.record_instance(record("1.1", 100.0))
    store.record_instance(record("1.2", 100.0))
    store.record_instance(record("1.1", 101.0))
    store.record_conflict("1.1")
    assert (store.duplicates("1.1"), store.conflicts("1.1")) == (1, 1)
    (study,) = store.studies()
    assert (study.duplicate_count, study.conflict_count) == (1, 1)
    with pytest.raises(NotFoundError):
        store.record_conflict("9.9")


def test_a_database_from_before_conflict_counts_gets_its_column(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    store.record_instance(record("1.1", 100.0))
    store.close()
    old = sqlite3.connect(tmp_path / "jobs.db")  # as schema version 3 left it
    old.execute("DROP TABLE alembic_version")
    old.execute("ALTER TABLE instances DROP COLUMN conflicts")
    old.commit()
    old.close()
    reopened = SQLiteJobStore(tmp_path / "jobs.db")
    assert reopened.conflicts("1.1") == 0
    reopened.record_conflict("1.1")
    assert reopened.studies()[0].conflict_count == 1


def _complete_in_process(
    db: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.queues.Queue
) -> None:  # type: ignore[name-defined]
    store = SQLiteJobStore(db)
    barrier.wait()
    out.put(store.complete_due(10_000.0, QUIET, MAX_WAIT))


def _claim_in_process(
    db: str,
    name: str,
    barrier: multiprocessing.synchronize.Barrier,
    out: multiprocessing.queues.Queue,
) -> None:  # type: ignore[name-defined]
    store = SQLiteJobStore(db)
    barrier.wait()
    claimed: list[int] = []
    while True:
        jobs = store.claim_runs(10_000.0, 1, name)
        if not jobs:
            break
        claimed += [job.id for job in jobs]
    out.put(claimed)


def test_two_nodes_claim_each_run_once(database: str) -> None:
    store = SQLiteJobStore(database)
    runs: list[int] = []
    for i in range(10):
        round_id = store.record_instance(record(f"1.{i}", 100.0, study=f"1.9.{i}")).job_id
        store.complete_due(10_000.0, QUIET, MAX_WAIT)
        spec = RunSpec(rule="r", pipeline="ct-lung", series_instance_uid=f"1.8.{i}")
        runs += store.route(round_id, [spec, spec], "a rule")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_process, args=(database, name, barrier, out))
        for name in ("a", "b")
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert sorted(results[0] + results[1]) == sorted(runs)
    holders = {job.id: job.claimed_by for job in store.jobs(state=JobState.RUNNING)}
    assert set(holders) == set(runs) and set(holders.values()) <= {"a", "b"}
    # a node that starts again takes back only what it left RUNNING
    mine = store.requeue_orphans("restarted", "a")
    assert sorted(mine) == sorted(job_id for job_id, name in holders.items() if name == "a")


def test_two_assemblers_complete_each_round_once(database: str) -> None:
    db = database
    store = SQLiteJobStore(db)
    ids = {
        store.record_instance(record(f"1.{i}", 100.0, study=f"1.9.{i}")).job_id for i in range(20)
    }
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_complete_in_process, args=(db, barrier, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    completed = results[0] + results[1]
    assert sorted(completed) == sorted(ids)
    for job_id in ids:
        assert [t.to_state for t in store.history(job_id)].count(JobState.COMPLETE) == 1
