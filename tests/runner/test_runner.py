"""The runner in a running node: real pushes, real worker processes, every failure mode."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dicomnode.jobs import JobState, SQLiteJobStore
from dicomnode.resultfile import load_result
from tests.conftest import open_store
from tests.helpers import echo, store_statuses, storescu, wait_for
from tests.runner.test_registry_manifest import write_model

pytestmark = [pytest.mark.peers, pytest.mark.slow]

PLUGINS = [
    "tests.runner.faulty:Threshold",
    "tests.runner.faulty:Raises",
    "tests.runner.faulty:Exits",
    "tests.runner.faulty:Hangs",
    "tests.runner.faulty:WithModel",
]


def rule(name: str, pipeline: str, description: str) -> dict[str, object]:
    return {
        "name": name,
        "match": {"series": {"SeriesDescription": {"equals": description}}},
        "pipeline": pipeline,
    }


def runner_settings(make_settings, tmp_path: Path, **runner: object):
    return make_settings(
        assembly={"quiet_seconds": 1.5, "poll_seconds": 0.1},
        runner={
            "enabled": True,
            "workers": 2,
            "device": "cpu",
            "threads": 1,
            "poll_seconds": 0.1,
            "timeout_seconds": 60,
            "max_attempts": 2,
            "retry_backoff_seconds": 0,
            "plugins": PLUGINS,
            "models_dir": str(tmp_path / "models"),
            "pipelines": {"test-hangs": {"timeout_seconds": 2}},
            **runner,
        },
        routing={
            "rules": [
                rule("good", "test-threshold", "good"),
                rule("raises", "test-raises", "raises"),
                rule("exits", "test-exits", "exits"),
                rule("hangs", "test-hangs", "hangs"),
                rule("model", "test-model", "model"),
                rule("missing", "no-such-pipeline", "missing"),
            ]
        },
    )


def push(ct_series, port: int, description: str, slices: int = 4):
    series = ct_series(slices=slices, size=16, name=description)
    import pydicom

    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        ds.save_as(path)
    assert store_statuses(storescu(series.paths, port).stderr) == ["Success"] * slices
    return series


def run_of(store: SQLiteJobStore, study_uid: str):
    runs = [j for j in store.jobs(study_instance_uid=study_uid) if j.kind == "run"]
    return runs[0] if len(runs) == 1 else None


def final(store: SQLiteJobStore, study_uid: str, timeout: float = 90):
    def settled():
        job = run_of(store, study_uid)
        if job is not None and job.state in (JobState.DONE, JobState.DEAD):
            return job
        return None

    return wait_for(settled, timeout, f"the run of {study_uid} to finish", interval=0.2)


def test_failures_end_dead_while_the_node_serves_and_good_runs_finish(
    make_settings, start_node, ct_series, tmp_path
):
    write_model(tmp_path / "models", b"0.5", sha256="0" * 64)  # wrong hash
    settings = runner_settings(make_settings, tmp_path)
    start_node(settings)
    port = settings.node.port
    studies = {name: push(ct_series, port, name) for name in ("raises", "exits", "hangs")}
    studies["good"] = push(ct_series, port, "good")
    studies["model"] = push(ct_series, port, "model")
    studies["missing"] = push(ct_series, port, "missing")
    store = open_store(settings)

    good = final(store, studies["good"].study_uid)
    assert good.state == JobState.DONE and good.attempts == 1
    result, document = load_result(Path(good.result_dir))
    assert result.label_map is not None and result.label_map.shape == (4, 16, 16)
    assert document["volume"]["series_instance_uid"] == studies["good"].series_uid
    assert result.measurements[0].value > 0

    for name, words in [
        ("raises", "RuntimeError: the model fell over"),
        ("exits", "worker process exited (code 3)"),
        ("hangs", "timed out"),
    ]:
        job = final(store, studies[name].study_uid)
        assert job.state == JobState.DEAD, name
        assert job.attempts == 2, name  # max_attempts
        assert words in (job.reason or ""), (name, job.reason)
        states = [t.to_state for t in store.history(job.id)]
        assert states.count(JobState.FAILED_RETRYABLE) == 1, (name, states)
    raised = final(store, studies["raises"].study_uid)
    assert "RuntimeError" in (raised.traceback or "") and "faulty.py" in raised.traceback

    model = final(store, studies["model"].study_uid)
    assert model.state == JobState.DEAD and model.attempts == 1  # no retry for a bad model
    assert "model 'tiny-model' 1.2.3" in (model.reason or "")
    missing = final(store, studies["missing"].study_uid)
    assert "not installed" in (missing.reason or "")

    assert echo(port)  # the node kept serving throughout
    again = push(ct_series, port, "good", slices=3)
    assert final(store, again.study_uid).state == JobState.DONE


def test_models_stay_loaded_and_a_dead_run_can_be_retried(
    make_settings, start_node, ct_series, tmp_path
):
    write_model(tmp_path / "models", b"0.5")
    settings = runner_settings(make_settings, tmp_path, workers=1)
    start_node(settings)
    port = settings.node.port
    store = open_store(settings)
    first = final(store, push(ct_series, port, "good").study_uid)
    second = final(store, push(ct_series, port, "good").study_uid)
    assert "loaded 1 time(s)" in (first.reason or "")
    assert "loaded 1 time(s)" in (second.reason or "")  # same worker, not reloaded
    assert (first.reason or "").split("pid")[1] == (second.reason or "").split("pid")[1]

    model = final(store, push(ct_series, port, "model").study_uid)
    assert model.state == JobState.DONE
    result, _ = load_result(Path(model.result_dir))
    assert result.models[0].sha256 == hashlib.sha256(b"0.5").hexdigest()
    # provenance in the job store too: the run's recorded reason names the model
    assert f"tiny-model 1.2.3 sha256 {result.models[0].sha256}" in (model.reason or "")

    dead = final(store, push(ct_series, port, "raises").study_uid)
    assert dead.state == JobState.DEAD
    store.retry(dead.id)

    def retried():
        job = store.get_job(dead.id)
        history = [t.to_state for t in store.history(dead.id)]
        return job.state == JobState.DEAD and history.count(JobState.DEAD) == 2

    wait_for(retried, 60, "the retried run to fail again")
    assert store.get_job(dead.id).attempts == 2


def test_results_go_to_the_outbox_and_on_to_every_destination(
    make_settings, start_node, ct_series, tmp_path
):
    base = runner_settings(make_settings, tmp_path, workers=1)
    good = {**rule("good", "test-threshold", "good"), "destinations": ["pacs", "archive"]}
    settings = make_settings(
        assembly={"quiet_seconds": 1.5, "poll_seconds": 0.1},
        runner=base.runner.model_dump(mode="json"),
        routing={"rules": [good]},
        destinations={
            "pacs": {"type": "folder", "path": str(tmp_path / "pacs")},
            "archive": {"type": "folder", "path": str(tmp_path / "archive")},
        },
        export={"poll_seconds": 0.1},
    )
    start_node(settings)
    store = open_store(settings)
    series = push(ct_series, settings.node.port, "good")
    job = final(store, series.study_uid)
    assert job.state == JobState.DONE, job.reason
    items = store.outbox(job.id)
    objects = sorted({i.path for i in items})
    assert [Path(p).name.split("_")[0] for p in objects] == ["SEG", "SR"]
    assert all(
        Path(p).parent == settings.storage.spool_path / "outbox" / f"job-{job.id}" for p in objects
    )
    assert sorted((i.destination, Path(i.path).name, i.state) for i in items) == sorted(
        (d, Path(p).name, "DELIVERED") for d in ("archive", "pacs") for p in objects
    )
    for folder in ("pacs", "archive"):
        got = sorted(p.name for p in (tmp_path / folder / series.study_uid).rglob("*.dcm"))
        assert got == [Path(p).name for p in objects]


def test_half_written_results_left_by_a_crash_are_removed_at_start(
    make_settings, start_node, tmp_path
):
    settings = runner_settings(make_settings, tmp_path, workers=1)
    results = settings.storage.data_dir / "results"
    outbox = settings.storage.spool_path / "outbox"
    kept = results / "job-3"
    kept.mkdir(parents=True)
    (kept / "result.json").write_text("{}", encoding="utf-8")
    leftovers = [
        results / "job-4.tmp-0a1b2c3d",  # a result folder still under its staging name
        outbox / "job-3.tmp-deadbeef",  # DICOM objects that were being written
        kept / "result.json.tmp-00ff00ff",  # timings being added
    ]
    for path in leftovers[:2]:
        path.mkdir(parents=True)
        (path / "part.dcm").write_bytes(b"half")
    leftovers[2].write_text("{", encoding="utf-8")
    start_node(settings)
    assert [p for p in leftovers if p.exists()] == []
    assert (kept / "result.json").read_text(encoding="utf-8") == "{}"


def test_permanent_input_faults_end_dead_after_one_attempt(
    make_settings, start_node, ct_series, tmp_path
):
    """A series without Frame of Reference UID (a real head CT, and a CT series
    whose FoR was removed) cannot get a SEG; a CT 7.8 mm across is no chest.
    Each run is DEAD after its first attempt, with the reason, never retried."""
    import pydicom
    from pydicom.data import get_testdata_file

    base = runner_settings(make_settings, tmp_path, workers=1)
    settings = make_settings(
        assembly={"quiet_seconds": 1.5, "poll_seconds": 0.1},
        runner={**base.runner.model_dump(mode="json"), "max_attempts": 3},
        routing={
            "rules": [
                rule("no-for", "test-threshold", "no-for"),
                rule("head", "test-threshold", "head"),
                rule("tiny", "ct-lung", "tiny"),
            ]
        },
    )
    start_node(settings)
    port = settings.node.port
    store = open_store(settings)

    series = ct_series(slices=4, size=16, name="no-for")
    for path in series.paths:
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.SeriesDescription = "no-for"
        ds.save_as(path)
    assert store_statuses(storescu(series.paths, port).stderr) == ["Success"] * 4

    head = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))  # CQ500 head CT, no FoR
    assert "FrameOfReferenceUID" not in head
    head.decompress()
    head.SeriesDescription = "head"
    head_path = tmp_path / "head.dcm"
    head.save_as(head_path)
    assert store_statuses(storescu([head_path], port).stderr) == ["Success"]

    tiny = ct_series(slices=5, size=16, name="tiny", spacing=7.8 / 16)
    for path in tiny.paths:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "tiny"
        ds.save_as(path)
    assert store_statuses(storescu(tiny.paths, port).stderr) == ["Success"] * 5

    for study_uid, words in [
        (series.study_uid, "no Frame of Reference UID (0020,0052)"),
        (str(head.StudyInstanceUID), "no Frame of Reference UID (0020,0052)"),
        (tiny.study_uid, "field of view 7.8 x 7.8 mm"),
    ]:
        job = final(store, study_uid)
        assert job.state == JobState.DEAD, job.reason
        assert job.attempts == 1, job.reason
        assert words in (job.reason or ""), job.reason
        states = [t.to_state for t in store.history(job.id)]
        assert JobState.FAILED_RETRYABLE not in states, states
        assert not store.outbox(job.id)
