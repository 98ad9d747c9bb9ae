"""Retention: finished studies leave the spool after the retention period, and
nothing else does."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.config import Settings, parse_config
from dicomnode.errors import ConfigError, PurgedError
from dicomnode.jobs import AuditEvent, InstanceRecord, Job, JobState, RunSpec, SQLiteJobStore
from dicomnode.protocol import ResultObject
from dicomnode.service import Node
from dicomnode.spool import PurgeReport, RetentionSweeper, Spool, purge_study, remove_files
from dicomnode.synthetic import Series
from tests.conftest import open_store, wait_for_state
from tests.helpers import node_config, store_statuses, storescu, wait_for, write_config

STUDY, SERIES = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.1"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
QUIET, MAX_WAIT = 30.0, 3600.0
DAY = 86400.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> SQLiteJobStore:
    return SQLiteJobStore(tmp_path / "jobs.db", clock=clock)


def receive(spool: Spool, store: SQLiteJobStore, sop: str, at: float) -> Path:
    """What the C-STORE handler does: the file into the spool, then its row."""
    stored = spool.store(STUDY, SERIES, sop, f"instance {sop}".encode())
    store.record_instance(
        InstanceRecord(
            sop_instance_uid=sop,
            series_instance_uid=SERIES,
            study_instance_uid=STUDY,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="CT",
            path=str(stored.path),
            size=stored.size,
            calling_ae="SCANNER",
            received_at=at,
        )
    )
    return stored.path


def discarded_round(spool: Spool, store: SQLiteJobStore, clock: Clock) -> tuple[Job, list[Path]]:
    """A round of two instances, completed and discarded (no rule matched)."""
    paths = [receive(spool, store, f"{SERIES}.{i}", clock.now) for i in (1, 2)]
    clock.now += QUIET
    (job_id,) = store.complete_due(clock.now, QUIET, MAX_WAIT)
    store.route(job_id, [], "no rule matched")
    return store.get_job(job_id), paths


def routed_run(
    spool: Spool, store: SQLiteJobStore, clock: Clock, destinations: tuple[str, ...] = ()
) -> Job:
    """A round of one instance routed to one pipeline run (ROUTED)."""
    receive(spool, store, f"{SERIES}.1", clock.now)
    clock.now += QUIET
    (job_id,) = store.complete_due(clock.now, QUIET, MAX_WAIT)
    run = RunSpec(
        rule="lungs", pipeline="ct-lung", series_instance_uid=SERIES, destinations=destinations
    )
    (run_id,) = store.route(job_id, [run], "matched lungs → ct-lung")
    return store.get_job(run_id)


def seg_object(path: Path | str) -> ResultObject:
    """The outbox record of a SEG written at ``path``."""
    return ResultObject("SEG", SEG_CLASS, "1.2.3", STUDY, "1.2.3.9", Path(path))


def write_results(tmp_path: Path, spool: Spool, job_id: int) -> tuple[Path, Path, Path]:
    """A run's result folder and its outbox folder with one object, as the runner writes them."""
    result_dir = tmp_path / "results" / f"job-{job_id}"
    result_dir.mkdir(parents=True)
    (result_dir / "result.json").write_text("{}")
    outbox_dir = spool.root / "outbox" / f"job-{job_id}"
    outbox_dir.mkdir(parents=True)
    seg = outbox_dir / "SEG_1.2.3.dcm"
    seg.write_bytes(b"seg")
    return result_dir, outbox_dir, seg


# -- the purge, step by step ------------------------------------------------


def test_a_discarded_study_is_purged_and_its_history_kept(
    spool: Spool, store: SQLiteJobStore, clock: Clock
) -> None:
    job, paths = discarded_round(spool, store, clock)
    clock.now += DAY
    assert store.expired_studies(clock.now - DAY) == []  # not yet: exactly one day quiet
    assert store.expired_studies(clock.now - DAY + 0.001) == [STUDY]
    size = sum(p.stat().st_size for p in paths)
    report = purge_study(spool, store, STUDY, clock.now - 1.0, clock.now)
    assert report == PurgeReport(studies=1, files=2, bytes=size)
    assert not any(p.exists() for p in paths)
    assert list(spool.studies_dir.iterdir()) == []  # the emptied study folders went too
    assert store.instances(STUDY) == []
    purged = store.get_job(job.id)
    assert (purged.state, purged.purged_at, purged.instance_count) == (
        JobState.DISCARDED,
        clock.now,
        2,
    )
    assert [t.to_state for t in store.history(job.id)] == [
        JobState.RECEIVED,
        JobState.COMPLETE,
        JobState.DISCARDED,
    ]
    (study,) = store.studies()
    assert (study.instance_count, study.rounds, study.purged_rounds, study.purged_at) == (
        0,
        1,
        1,
        clock.now,
    )
    assert store.expired_studies(clock.now + DAY) == []  # nothing left to purge
    (audited,) = store.audit_records(event=str(AuditEvent.RETENTION_PURGE))
    assert (audited.at, audited.entry.study_instance_uid, audited.entry.detail) == (
        clock.now,
        STUDY,
        {"jobs": [job.id], "instances": 2, "files": 2},
    )


def test_a_late_instance_arriving_during_a_purge_is_kept(
    spool: Spool, store: SQLiteJobStore, clock: Clock
) -> None:
    old, old_paths = discarded_round(spool, store, clock)
    clock.now += DAY
    plan = store.purge_plan(STUDY, clock.now - 1.0)  # step one: what goes
    assert plan is not None and [j.id for j in plan.jobs] == [old.id]
    late = receive(spool, store, f"{SERIES}.99", clock.now)  # same series folder, new round
    assert late.parent == old_paths[0].parent
    removed = remove_files(spool, plan)  # step two: exactly the plan's files
    assert (removed.files, store.mark_purged(plan, clock.now)) == (2, 2)  # step three
    assert late.read_bytes() == f"instance {SERIES}.99".encode()
    assert store.has_instance(f"{SERIES}.99")
    assert not any(p.exists() for p in old_paths)
    rounds = sorted(store.jobs(study_instance_uid=STUDY), key=lambda j: j.round)
    assert [(j.round, j.state, j.purged_at) for j in rounds] == [
        (1, JobState.DISCARDED, clock.now),
        (2, JobState.RECEIVED, None),
    ]
    # the new round is not final: the study is not purged again, however old it gets
    assert store.expired_studies(clock.now + 365 * DAY) == []
    assert purge_study(spool, store, STUDY, clock.now + 365 * DAY, clock.now) == PurgeReport()
    assert late.exists()


def test_an_unfinished_round_keeps_the_whole_study(
    spool: Spool, store: SQLiteJobStore, clock: Clock
) -> None:
    _, old_paths = discarded_round(spool, store, clock)
    clock.now += 1000.0
    late = receive(spool, store, f"{SERIES}.99", clock.now)  # round 2 stays RECEIVED
    far = clock.now + 365 * DAY
    assert store.expired_studies(far) == []
    assert store.purge_plan(STUDY, far) is None
    assert all(p.exists() for p in [*old_paths, late])
    assert len(store.instances(STUDY)) == 3


def _to_state(store: SQLiteJobStore, clock: Clock, run: Job, state: JobState) -> None:
    if state == JobState.ROUTED:
        return
    assert [j.id for j in store.claim_runs(clock.now, 1)] == [run.id]
    if state == JobState.RUNNING:
        return
    if state == JobState.FAILED_RETRYABLE:
        store.fail_run(run.id, "out of memory", None, retry_at=clock.now + 60)
    elif state == JobState.DEAD:
        store.fail_run(run.id, "model refused the input", None, retry_at=None)
    else:
        store.finish_run(
            run.id, "/nowhere/results", "done", (seg_object("/nowhere/outbox/SEG.dcm"),)
        )
        if state in (JobState.EXPORTING, JobState.DONE):
            store.start_exports()
        if state == JobState.DONE:
            (item,) = store.outbox(run.id)
            store.record_delivery([item.id], "DELIVERED")
            store.settle_exports()
    assert store.get_job(run.id).state == state


@pytest.mark.parametrize(
    ("state", "purged"),
    [
        (JobState.ROUTED, False),
        (JobState.RUNNING, False),
        (JobState.FAILED_RETRYABLE, False),
        (JobState.RESULTS_WRITTEN, False),
        (JobState.EXPORTING, False),
        (JobState.DONE, True),
        (JobState.DEAD, True),
    ],
)
def test_only_final_runs_let_a_study_go(
    spool: Spool, store: SQLiteJobStore, clock: Clock, state: JobState, purged: bool
) -> None:
    run = routed_run(spool, store, clock, destinations=("pacs",))
    _to_state(store, clock, run, state)
    clock.now += 30 * DAY
    report = purge_study(spool, store, STUDY, clock.now - DAY, clock.now)
    assert report.studies == int(purged)
    assert store.has_instance(f"{SERIES}.1") is not purged
    assert {j.purged_at is not None for j in store.jobs(study_instance_uid=STUDY)} == {purged}


def test_a_dead_run_loses_its_results_and_cannot_be_retried(
    tmp_path: Path, spool: Spool, store: SQLiteJobStore, clock: Clock
) -> None:
    run = routed_run(spool, store, clock, destinations=("pacs",))
    store.claim_runs(clock.now, 1)
    result_dir, outbox_dir, seg = write_results(tmp_path, spool, run.id)
    store.finish_run(run.id, str(result_dir), "nodule found", (seg_object(seg),))
    store.start_exports()
    (item,) = store.outbox(run.id)
    store.record_delivery([item.id], "DEAD", error="association rejected")
    store.settle_exports()
    assert store.get_job(run.id).state == JobState.DEAD
    clock.now += 8 * DAY
    report = purge_study(spool, store, STUDY, clock.now - 7 * DAY, clock.now)
    assert (report.studies, report.files) == (1, 3)  # the instance, the SEG, result.json
    assert not result_dir.exists() and not outbox_dir.exists()
    assert (spool.root / "outbox").is_dir()  # the spool's own folders stay
    assert [d.state for d in store.outbox(run.id)] == ["DEAD"]  # delivery history kept
    with pytest.raises(PurgedError, match=r"purged by retention .*storage\.retention_days"):
        store.retry(run.id)
    with pytest.raises(PurgedError, match="retention"):
        store.replay(run.id)
    with pytest.raises(PurgedError, match="retention"):
        store.transition(run.parent_id or 0, JobState.COMPLETE)  # not even by hand
    assert store.get_job(run.id).state == JobState.DEAD


def test_a_crash_between_files_and_rows_is_completed_by_the_next_pass(
    spool: Spool, store: SQLiteJobStore, clock: Clock
) -> None:
    job, paths = discarded_round(spool, store, clock)
    clock.now += 2 * DAY
    plan = store.purge_plan(STUDY, clock.now - DAY)
    assert plan is not None
    remove_files(spool, plan)  # ...and the node is killed here
    assert not any(p.exists() for p in paths) and len(store.instances(STUDY)) == 2
    assert store.get_job(job.id).purged_at is None
    report = purge_study(spool, store, STUDY, clock.now - DAY, clock.now)
    assert report == PurgeReport(studies=1)  # the files were gone already: fine
    assert store.instances(STUDY) == [] and store.get_job(job.id).purged_at == clock.now


def test_a_job_that_moves_during_the_purge_is_not_marked(
    spool: Spool, store: SQLiteJobStore, clock: Clock
) -> None:
    run = routed_run(spool, store, clock)
    _to_state(store, clock, run, JobState.DEAD)
    clock.now += 2 * DAY
    plan = store.purge_plan(STUDY, clock.now - DAY)
    assert plan is not None
    store.retry(run.id)  # an admin retries it meanwhile
    remove_files(spool, plan)
    assert store.mark_purged(plan, clock.now) is None
    assert store.get_job(run.id).state == JobState.ROUTED
    assert all(j.purged_at is None for j in store.jobs(study_instance_uid=STUDY))
    assert store.has_instance(f"{SERIES}.1")


def test_a_re_sent_instance_after_the_purge_is_new_data(
    spool: Spool, store: SQLiteJobStore, clock: Clock
) -> None:
    old, paths = discarded_round(spool, store, clock)
    clock.now += 2 * DAY
    purge_study(spool, store, STUDY, clock.now - DAY, clock.now)
    again = receive(spool, store, f"{SERIES}.1", clock.now)
    assert again == paths[0] and again.exists()
    assert store.duplicates(f"{SERIES}.1") == 0
    (new,) = store.open_rounds()
    assert (new.round, new.instance_count) == (2, 1)
    assert store.get_job(old.id).purged_at is not None


def test_the_sweeper_does_nothing_without_a_retention_period(
    spool: Spool, store: SQLiteJobStore, clock: Clock
) -> None:
    _, paths = discarded_round(spool, store, clock)
    clock.now += 365 * DAY
    storage = parse_config({"storage": {"retention_days": None}}).storage
    sweeper = RetentionSweeper(storage, spool, store, clock=clock)
    assert store.expired_studies(clock.now) == [STUDY]  # it would qualify...
    assert sweeper.run_once() == PurgeReport()  # ...but retention is off
    sweeper.start()
    assert not sweeper.running
    assert all(p.exists() for p in paths) and len(store.instances(STUDY)) == 2
    on = RetentionSweeper(parse_config(None).storage, spool, store, clock=clock)
    assert on.run_once().studies == 1  # the default (7 days) purges it


# -- configuration ----------------------------------------------------------


def test_retention_settings() -> None:
    storage = parse_config(None).storage
    assert (storage.retention_days, storage.retention_check_seconds) == (7, 600)
    assert storage.retention_seconds == 7 * DAY
    off = parse_config({"storage": {"retention_days": None}}).storage
    assert off.retention_days is None and off.retention_seconds is None


@pytest.mark.parametrize(
    ("storage", "field", "words"),
    [
        ({"retention_days": 0}, "storage.retention_days", "greater than 0"),
        ({"retention_days": -1}, "storage.retention_days", "greater than 0"),
        ({"retention_days": "a week"}, "storage.retention_days", "valid number"),
        ({"retention_check_seconds": 0}, "storage.retention_check_seconds", "greater than 0"),
        ({"retention_check_seconds": None}, "storage.retention_check_seconds", "valid number"),
        ({"retention": 7}, "storage.retention", "Extra inputs"),
    ],
)
def test_retention_errors_name_the_field(
    storage: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"storage": storage})
    assert any(p.startswith(f"{field}:") and words in p for p in info.value.problems), info.value


# -- the command line -------------------------------------------------------


def test_cli_on_a_purged_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "node.yaml", node_config(tmp_path))
    settings = parse_config(node_config(tmp_path))
    spool = Spool(settings.storage.spool_path)
    store = SQLiteJobStore(settings.database_url)
    clock = Clock(time.time())
    run = routed_run(spool, store, clock)
    store.claim_runs(clock.now, 1)
    store.fail_run(run.id, "model refused the input", None, retry_at=None)
    now = time.time() + QUIET + 60.0
    assert purge_study(spool, store, STUDY, now, now).studies == 1
    store.close()

    assert main(["jobs", "retry", str(run.id), "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: job {run.id} was purged by retention on ")
    assert "storage.retention_days" in err and "Traceback" not in err

    assert main(["jobs", "show", str(run.id), "-c", str(config)]) == 0
    assert "purged by retention on" in capsys.readouterr().out

    assert main(["studies", "--full", "-c", str(config)]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if STUDY in line]
    assert row.split()[1:8] == ["-", "0", "0", "0", "0", "1", "ROUTED"]
    assert "1/1 rounds" in row


# -- the node ---------------------------------------------------------------

#: About 4.3 s: long enough to look at a study's files before they go.
SHORT_DAYS = 0.00005


def _purged(store: SQLiteJobStore, study_uid: str, rounds: int) -> list[Job] | None:
    jobs = store.jobs(study_instance_uid=study_uid)
    done = [j for j in jobs if j.purged_at is not None]
    return jobs if len(jobs) == rounds and len(done) == rounds else None


@pytest.mark.peers
def test_the_node_purges_a_discarded_study_and_takes_it_again(
    make_settings: Callable[..., Settings],
    start_node: Callable[[Settings], Node],
    ct_series: Callable[..., Series],
) -> None:
    settings = make_settings(
        storage={"retention_days": SHORT_DAYS, "retention_check_seconds": 0.2},
        assembly={"quiet_seconds": 2, "poll_seconds": 0.1},
    )
    start_node(settings)
    series = ct_series(slices=4, size=16)
    store = open_store(settings)
    assert store_statuses(storescu(series.paths, settings.node.port).stderr) == ["Success"] * 4
    paths = [Path(r.path) for r in store.instances(series.study_uid)]
    assert len(paths) == 4 and all(p.exists() for p in paths)

    (job,) = wait_for(lambda: _purged(store, series.study_uid, 1), 60, "the study to be purged")
    assert not any(p.exists() for p in paths)
    assert not (settings.storage.spool_path / "studies" / series.study_uid).exists()
    assert store.instances(series.study_uid) == []
    history = store.history(job.id)
    assert [t.to_state for t in history] == [
        JobState.RECEIVED,
        JobState.COMPLETE,
        JobState.DISCARDED,
    ]
    assert job.purged_at is not None
    assert job.purged_at - history[-1].at >= SHORT_DAYS * DAY  # not before its time

    # the same instances again: stored as new data in a new round, not duplicates
    assert store_statuses(storescu(series.paths, settings.node.port).stderr) == ["Success"] * 4
    assert all(p.exists() for p in paths)  # ~5 s before this round could go
    rounds = sorted(store.jobs(study_instance_uid=series.study_uid), key=lambda j: j.round)
    assert [(j.round, j.instance_count) for j in rounds] == [(1, 4), (2, 4)]
    assert rounds[1].purged_at is None
    wait_for(lambda: _purged(store, series.study_uid, 2), 60, "the second round to be purged")
    assert [t.to_state for t in store.history(rounds[1].id)][-1] == JobState.DISCARDED
    (study,) = [s for s in store.studies() if s.study_instance_uid == series.study_uid]
    assert (study.rounds, study.purged_rounds, study.instance_count) == (2, 2, 0)


@pytest.mark.peers
def test_the_node_never_purges_a_study_still_receiving(
    make_settings: Callable[..., Settings],
    start_node: Callable[[Settings], Node],
    ct_series: Callable[..., Series],
) -> None:
    period = 0.00002 * DAY  # about 1.7 s
    settings = make_settings(
        storage={"retention_days": 0.00002, "retention_check_seconds": 0.2},
        assembly={"quiet_seconds": 3600, "max_wait_seconds": 3600, "poll_seconds": 0.1},
    )
    node = start_node(settings)
    sweeper = node.retention
    assert isinstance(sweeper, RetentionSweeper) and sweeper.running
    series = ct_series(slices=3, size=16)
    store = open_store(settings)
    assert store_statuses(storescu(series.paths, settings.node.port).stderr) == ["Success"] * 3
    (job,) = store.jobs(study_instance_uid=series.study_uid)
    old_enough = job.last_instance_at + period + 1.0
    passes: list[int] = []

    def passes_over_an_old_study() -> bool:
        at = sweeper.last_pass_at
        if at is not None and at > old_enough and sweeper.passes not in passes:
            passes.append(sweeper.passes)
        return len(passes) >= 3

    wait_for(passes_over_an_old_study, 60, "three retention passes after the period")
    assert store.get_job(job.id).state == JobState.RECEIVED
    assert store.get_job(job.id).purged_at is None
    records = store.instances(series.study_uid)
    assert len(records) == 3 and all(Path(r.path).exists() for r in records)


@pytest.mark.peers
def test_the_node_keeps_everything_with_retention_off(
    make_settings: Callable[..., Settings],
    start_node: Callable[[Settings], Node],
    ct_series: Callable[..., Series],
) -> None:
    settings = make_settings(
        storage={"retention_days": None, "retention_check_seconds": 0.2},
        assembly={"quiet_seconds": 2, "poll_seconds": 0.1},
    )
    node = start_node(settings)
    sweeper = node.retention
    assert isinstance(sweeper, RetentionSweeper) and not sweeper.running
    series = ct_series(slices=2, size=16)
    store = open_store(settings)
    assert store_statuses(storescu(series.paths, settings.node.port).stderr) == ["Success"] * 2
    wait_for_state(store, series.study_uid, JobState.DISCARDED, timeout=30)
    far = time.time() + 365 * DAY
    assert store.expired_studies(far) == [series.study_uid]  # it would qualify
    assert sweeper.run_once() == PurgeReport()
    records = store.instances(series.study_uid)
    assert len(records) == 2 and all(Path(r.path).exists() for r in records)
