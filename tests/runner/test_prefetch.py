"""Volumes read ahead during a study's quiet period: used when the files are
still the ones read, read again when any changed, given to one run only."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.jobs import JobState, SQLiteJobStore
from dicomnode.runner.prefetch import Prefetch, SeriesCache
from dicomnode.runner.volume import load_series
from dicomnode.runner.worker import Task, Worker, WorkerSettings
from dicomnode.synthetic import write_ct_series
from tests.helpers import NodeProcess, free_port, node_config, store_of, storescu, wait_for
from tests.runner.test_runner import final
from tests.test_metrics import samples, value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def names(paths: list[Path]) -> tuple[str, ...]:
    return tuple(str(p) for p in paths)


def test_each_series_of_a_study_becomes_the_volume_a_run_would_read(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    ct = write_ct_series(tmp_path / "a", slices=5, rows=16, columns=16, study_uid=study)
    other = write_ct_series(tmp_path / "b", slices=3, rows=16, columns=16, study_uid=study)
    not_dicom = tmp_path / "junk.dcm"
    not_dicom.write_bytes(b"not DICOM")
    cache = SeriesCache()
    request = Prefetch(names([*reversed(ct.paths), not_dicom, *other.paths]), keep_seconds=60)
    assert cache.fill(request) == 2
    datasets, volume = cache.take(names(ct.paths)) or ((), None)
    assert volume is not None
    expected = load_series(ct.paths)
    np.testing.assert_array_equal(volume.array, expected.array)
    assert volume.sources == expected.sources and volume.spacing == expected.spacing
    assert {str(ds.SOPInstanceUID) for ds in datasets} == set(ct.sop_uids)
    assert not any("PixelData" in ds for ds in datasets)  # headers only: the volume has them
    assert cache.take(names(ct.paths)) is None  # one run only
    assert cache.take(names(other.paths[:2])) is None  # not exactly a series read ahead
    assert cache.take(names(other.paths)) is not None  # the whole series still is


def test_a_changed_or_missing_file_and_an_expired_cache_give_nothing(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", slices=4, rows=16, columns=16)
    clock = Clock()
    cache = SeriesCache(clock)
    files = names(series.paths)

    cache.fill(Prefetch(files, keep_seconds=60))
    ds = pydicom.dcmread(series.paths[1])
    ds.RescaleIntercept = -1000
    ds.save_as(series.paths[1].with_suffix(".new"), enforce_file_format=True)
    series.paths[1].with_suffix(".new").replace(series.paths[1])  # what a resend does
    assert cache.take(files) is None

    cache.fill(Prefetch(files, keep_seconds=60))
    series.paths[2].unlink()
    assert cache.take(files) is None

    files = names(write_ct_series(tmp_path / "again", slices=4, rows=16, columns=16).paths)
    cache.fill(Prefetch(files, keep_seconds=60))
    assert cache.wait_seconds() == 60
    clock.now += 61
    assert cache.wait_seconds() == 0
    assert cache.take(files) is None


def test_a_run_after_a_resend_measures_the_new_pixels_not_those_read_ahead(
    tmp_path: Path,
) -> None:
    """A worker reads a series ahead; one instance is then replaced with other
    pixels: the run measures the replaced series, as if nothing had been read
    ahead. Unchanged, the run takes the volume read ahead."""
    series = write_ct_series(tmp_path / "ct", slices=4, rows=16, columns=16)
    files = names(series.paths)
    worker = Worker(
        WorkerSettings(
            device="cpu",
            threads=1,
            plugins=("tests.runner.faulty:Threshold",),
            models_dir=str(tmp_path),
            descriptors=False,
        )
    )

    def measured(job_id: int) -> str:
        outcome = worker.run(
            Task(job_id, "test-threshold", files, result_dir=str(tmp_path / f"r{job_id}"))
        )
        assert outcome.ok, outcome.summary
        return json.dumps(
            json.loads((tmp_path / f"r{job_id}" / "result.json").read_text())["measurements"]
        )

    worker.prefetch(Prefetch(files, keep_seconds=60))
    assert len(worker.cache) == 1
    before = measured(1)
    assert len(worker.cache) == 0  # the run took it

    worker.prefetch(Prefetch(files, keep_seconds=60))
    ds = pydicom.dcmread(series.paths[0])
    ds.PixelData = np.full((16, 16), 2000, dtype=np.uint16).tobytes()  # all above -500 HU
    ds.save_as(tmp_path / "resent.dcm", enforce_file_format=True)
    (tmp_path / "resent.dcm").replace(series.paths[0])
    after = measured(2)
    assert after != before
    assert after == measured(3)  # read from the files, as the changed run did


@pytest.mark.parametrize("read_ahead", [True, False])
def test_a_node_reads_the_study_during_its_quiet_period(
    node_process: Callable[..., NodeProcess], tmp_path: Path, read_ahead: bool
) -> None:
    """With ``runner.read_ahead`` (the default) the run takes the volume an
    idle worker read while the quiet period ran; with ``false`` it reads it."""
    metrics_port = free_port()
    config = node_config(
        tmp_path,
        metrics={"enabled": True, "port": metrics_port},
        assembly={"quiet_seconds": 3, "poll_seconds": 0.2},
        runner={
            "enabled": True,
            "workers": 1,
            "device": "cpu",
            "threads": 1,
            "read_ahead": read_ahead,
            "plugins": ["tests.runner.faulty:Threshold"],
            "models_dir": str(tmp_path / "models"),
        },
        routing={
            "rules": [
                {
                    "name": "ct",
                    "match": {"series": {"Modality": {"equals": "CT"}}},
                    "pipeline": "test-threshold",
                }
            ]
        },
    )
    node = node_process(config)
    wait_for(
        lambda: value(samples(metrics_port), "dicomnode_runner_workers", state="warm") == 1,
        60,
        "the worker to be warm",
    )
    series = write_ct_series(tmp_path / "ct", slices=4, rows=16, columns=16)
    assert storescu(series.paths, node.port).returncode == 0
    store = SQLiteJobStore(store_of(config))
    try:
        job = final(store, series.study_uid)
    finally:
        store.close()
    assert job.state == JobState.DONE
    read_early = "the volume was read during the quiet period" in node.log_path.read_text()
    assert read_early == read_ahead
