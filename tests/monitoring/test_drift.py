"""Drift monitoring: descriptors of real runs, PSI and KS, alerts on shifted inputs."""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydicom
import pytest
import yaml

from dicomnode.cli import main
from dicomnode.config import MonitoringConfig, parse_config
from dicomnode.errors import ConfigError
from dicomnode.jobs import JobState, SQLiteJobStore
from dicomnode.monitoring.descriptors import (
    COMPARE_UP_TO,
    CT_HU_EDGES,
    describe,
    describe_input,
    describe_output,
)
from dicomnode.monitoring.drift import (
    PSI_FLOOR,
    DriftMonitor,
    category_psi,
    check_pipeline,
    ks_p_value,
    numeric_psi,
    psi,
)
from dicomnode.protocol import Code, PipelineResult, Segment, SliceSource, Volume
from dicomnode.runner.worker import Task, Worker, WorkerSettings
from dicomnode.synthetic import write_ct_series
from tests.conftest import open_store
from tests.helpers import node_config
from tests.runner.faulty import Threshold
from tests.runner.test_runner import final, push, runner_settings

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PIPELINE = "test-threshold"
WINDOWS = MonitoringConfig(reference_runs=30, recent_runs=30, min_runs=20)


# --- PSI and KS against direct computations ---


def test_psi_of_a_constant_reference_against_a_half_moved_window() -> None:
    # bins: 1.0 and any other value; the reference is all 1.0, half the recent window not
    got = numeric_psi([1.0] * 20, [1.0] * 10 + [5.0] * 10)
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - PSI_FLOOR) * math.log(0.5 / PSI_FLOOR)
    assert got == pytest.approx(expected, rel=1e-12)
    assert numeric_psi([1.0] * 20, [1.0] * 20) == 0.0


def test_psi_over_categories_and_shares() -> None:
    # 75/25 against 25/75: (0.25-0.75) ln(1/3) + (0.75-0.25) ln 3 = ln 3
    got = category_psi(["A"] * 15 + ["B"] * 5, ["A"] * 5 + ["B"] * 15)
    assert got == pytest.approx(math.log(3), rel=1e-12)
    assert psi([1, 1], [1, 1]) == 0.0
    assert psi([2, 1, 1], [1, 1, 2]) == pytest.approx(2 * 0.25 * math.log(2), rel=1e-12)


def test_psi_over_reference_deciles() -> None:
    reference = list(range(100))  # inner deciles 9.9, 19.8, ..., 89.1: ten values in each bin
    recent = [v + 50 for v in range(100)]  # 50..89 in bins 5..8, 90..149 in the last bin
    e = [0.1] * 10
    a = [PSI_FLOOR] * 5 + [0.1] * 4 + [0.6]
    expected = sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e, strict=True))
    assert numeric_psi(reference, recent) == pytest.approx(expected, rel=1e-9)
    assert numeric_psi(reference, reference) == 0.0


def test_ks_p_value_of_two_separate_samples_is_the_exact_one() -> None:
    # D = 1 for two samples of 5 that do not overlap: 2 of the C(10, 5) orderings are as extreme
    assert ks_p_value([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252, rel=1e-9)
    assert ks_p_value([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)


def test_the_ct_histogram_matches_a_direct_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    array = rng.normal(0.0, 900.0, size=(4, 16, 16)).astype(np.float32)
    array[0, 0, :6] = [-1000.0, -1000.5, 1999.9, 2000.0, -999.9, 5000.0]  # edges and beyond
    volume = phantom_volume(array, 1.0)
    histogram = describe_input(volume)["histogram"]
    edges = np.asarray(CT_HU_EDGES)
    direct = [
        np.count_nonzero(array < edges[0]),
        *(np.count_nonzero((array >= lo) & (array < hi)) for lo, hi in itertools.pairwise(edges)),
        np.count_nonzero(array >= edges[-1]),
    ]
    assert histogram == [round(c / array.size, 6) for c in direct]
    assert describe_input(volume)["intensity_mean"] == pytest.approx(float(array.mean()), rel=1e-6)


@pytest.mark.parametrize("segments", [3, COMPARE_UP_TO + 4])
def test_segment_volumes_count_each_label_by_comparison_or_histogram(segments: int) -> None:
    """Few segments are counted by comparing each label, many by one histogram:
    both give each segment's voxels times the voxel volume, absent ones 0."""
    rng = np.random.default_rng(segments)
    labels = rng.integers(0, segments + 1, size=(5, 12, 14), dtype=np.uint8)
    labels[labels == 2] = 0  # segment 2 is declared but absent
    result = PipelineResult(
        label_map=labels,
        segments=tuple(
            Segment(
                label=n,
                name=f"s{n}",
                category=Code("91723000", "SCT", "Anatomical Structure"),
                type=Code("85756007", "SCT", "Tissue"),
            )
            for n in range(1, segments + 1)
        ),
    )
    found = describe_output(result, 0.5)
    for n in range(1, segments + 1):
        assert found[f"volume_ml.s{n}"] == int((labels == n).sum()) * 0.5
        assert found[f"present.s{n}"] == (0.0 if n == 2 else 1.0)


# --- shifted windows ---


def header_file(folder: Path, manufacturer: str, thickness: float) -> Path:
    """One CT instance whose header carries the manufacturer and slice thickness."""
    series = write_ct_series(folder / f"{manufacturer}-{thickness}", slices=1, rows=8, columns=8)
    ds = pydicom.dcmread(series.paths[0])
    ds.Manufacturer = manufacturer
    ds.SliceThickness = f"{thickness:g}"
    ds.ConvolutionKernel = "B30f"
    ds.save_as(series.paths[0])
    return series.paths[0]


def run_document(rng: np.random.Generator, header: Path, thickness: float, offset: float) -> str:
    """The descriptors of one run of the threshold pipeline on a noisy phantom."""
    array = np.full((4, 16, 16), -1000.0, dtype=np.float32)
    radius = rng.uniform(4.5, 6.5)
    yy, xx = np.mgrid[:16, :16]
    body = (yy - 8) ** 2 + (xx - 8) ** 2 < radius**2
    array[:, body] = rng.normal(40.0, 20.0, size=(4, int(body.sum())))
    array += np.float32(offset)
    volume = phantom_volume(array, thickness)
    return describe(volume, Threshold().run(volume, "cpu"), header)


def phantom_volume(array: np.ndarray[Any, Any], thickness: float) -> Volume:
    return Volume(
        array=array,
        spacing=(thickness, 0.7, 0.7),
        origin=(0.0, 0.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, 1.0),
        modality="CT",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        frame_of_reference_uid="1.2.3.5",
        sources=tuple(SliceSource(f"1.2.3.4.{i}", CT_IMAGE) for i in range(array.shape[0])),
    )


def fill(
    store: SQLiteJobStore,
    tmp_path: Path,
    count: int,
    seed: int,
    manufacturer: str = "Vendor A",
    thickness: float = 1.0,
    offset: float = 0.0,
) -> None:
    rng = np.random.default_rng(seed)
    header = header_file(tmp_path, manufacturer, thickness)
    for job in range(count):
        store.record_descriptors(job, PIPELINE, run_document(rng, header, thickness, offset))


@pytest.mark.parametrize(
    ("shift", "moved"),
    [
        ({"thickness": 5.0}, "input.SliceThickness"),
        ({"offset": 300.0}, "input.intensity_mean"),
        ({"offset": 300.0}, "input.intensity_histogram"),
        ({"manufacturer": "Vendor B"}, "input.Manufacturer"),
    ],
)
def test_a_shifted_window_raises_an_alert_naming_the_descriptor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, shift: dict[str, Any], moved: str
) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    fill(store, tmp_path, 30, seed=1)
    fill(store, tmp_path, 30, seed=2, **shift)
    with caplog.at_level(logging.WARNING, logger="dicomnode.monitoring.drift"):
        (report,) = DriftMonitor(WINDOWS, store, lambda: 0.0).check()
    assert (report.reference_runs, report.recent_runs) == (30, 30)
    assert moved in {c.descriptor for c in report.drifted}
    alerts = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"pipeline {PIPELINE}, {moved} moved (PSI " in line for line in alerts), alerts
    if "manufacturer" in shift:  # nothing else changed, nothing else is named
        assert [c.descriptor for c in report.drifted] == ["input.Manufacturer"]
        assert "Vendor" not in " ".join(alerts)  # values stay out of the log


def test_an_unshifted_window_raises_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    fill(store, tmp_path, 30, seed=1)
    fill(store, tmp_path, 30, seed=2)
    with caplog.at_level(logging.WARNING, logger="dicomnode.monitoring.drift"):
        (report,) = DriftMonitor(WINDOWS, store, lambda: 0.0).check()
    assert report.compared and len(report.comparisons) > 10
    assert report.drifted == ()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_too_few_runs_are_not_compared_and_the_recent_window_skips_reference_runs(
    tmp_path: Path,
) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    fill(store, tmp_path, 40, seed=1)
    report = check_pipeline(store, PIPELINE, WINDOWS, 0.0)
    assert (report.compared, report.reference_runs, report.recent_runs) == (False, 30, 10)
    days = MonitoringConfig(reference_runs=30, recent_days=1, min_runs=5)
    assert check_pipeline(store, PIPELINE, days, store._now() + 2 * 86400).recent_runs == 0
    assert check_pipeline(store, PIPELINE, days, store._now()).recent_runs == 10


# --- the webhook ---


class Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_alert_is_posted_to_the_webhook_and_a_dead_webhook_is_only_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.db")
    fill(store, tmp_path, 30, seed=1)
    fill(store, tmp_path, 30, seed=2, thickness=5.0)
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Receiver.bodies = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
        config = WINDOWS.model_copy(update={"webhook_url": url})
        DriftMonitor(config, store, lambda: 0.0).check()
    finally:
        server.shutdown()
        server.server_close()
    (body,) = Receiver.bodies
    assert (body["event"], body["pipeline"], body["recent_runs"]) == ("drift", PIPELINE, 30)
    thickness = next(d for d in body["drifted"] if d["descriptor"] == "input.SliceThickness")
    assert thickness["psi"] > 0.2 and thickness["p_value"] < 0.01

    # the server is gone: the check still finishes, the failure is a warning
    closed = WINDOWS.model_copy(update={"webhook_url": url, "webhook_timeout_seconds": 2.0})
    with caplog.at_level(logging.WARNING, logger="dicomnode.monitoring.drift"):
        (report,) = DriftMonitor(closed, store, lambda: 0.0).check()
    assert report.drifted
    assert any("not delivered to the webhook" in r.getMessage() for r in caplog.records)


# --- config and CLI ---


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"recent_runs": 10, "recent_days": 7}, "monitoring.recent_days"),
        ({"reference_from": "2026-01-01T00:00:00"}, "monitoring.reference_from"),
        ({"psi_treshold": 0.3}, "monitoring.psi_treshold"),
        ({"ks_p_threshold": 2}, "monitoring.ks_p_threshold"),
        ({"webhook_url": "ftp://x"}, "monitoring.webhook_url"),
    ],
)
def test_config_errors_name_the_field(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"monitoring": section})
    assert any(field in problem for problem in info.value.problems), info.value.problems


def test_monitoring_is_on_by_default() -> None:
    config = parse_config(None).monitoring
    assert config.enabled and config.recent_window_runs == 50
    assert (config.psi_threshold, config.ks_p_threshold) == (0.2, 0.01)


def test_the_drift_command_prints_the_latest_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = node_config(tmp_path, monitoring={"reference_runs": 30, "min_runs": 20})
    settings = parse_config(config)
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    store = open_store(settings)
    fill(store, tmp_path, 30, seed=1)
    fill(store, tmp_path, 30, seed=2, manufacturer="Vendor B")
    store.close()
    assert main(["drift", "-c", str(path), "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["pipeline"] == PIPELINE and report["compared"]
    moved = [c["descriptor"] for c in report["comparisons"] if c["drifted"]]
    assert moved == ["input.Manufacturer"]
    assert main(["drift", "-c", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"{PIPELINE}: 30 reference runs, 30 recent runs: input.Manufacturer" in text


# --- descriptors of real runs ---


@pytest.mark.peers
@pytest.mark.slow
def test_a_run_through_the_runner_records_its_descriptors(
    make_settings, start_node, ct_series, tmp_path
) -> None:
    settings = runner_settings(make_settings, tmp_path)
    start_node(settings)
    series = push(ct_series, settings.node.port, "good")
    store = open_store(settings)
    job = final(store, series.study_uid)
    assert job.state == JobState.DONE
    ((_, job_id, _, text),) = store.descriptors(PIPELINE)
    assert job_id == job.id
    document = json.loads(text)
    given, said = document["input"], document["output"]
    assert (given["Manufacturer"], given["KVP"]) == ("dicomnode synthetic", 120.0)
    assert given["SliceThickness"] > 0 and given["PixelSpacing"] > 0
    histogram = given["histogram"]
    assert len(histogram) == len(CT_HU_EDGES) + 1 == 32
    assert sum(histogram) == pytest.approx(1.0, abs=1e-4)
    assert said["present.dense"] == 1.0 and said["volume_ml.dense"] > 0


def test_a_descriptor_error_is_logged_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    series = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    worker = Worker(
        WorkerSettings(
            device="cpu",
            threads=1,
            plugins=("tests.runner.faulty:Threshold",),
            models_dir=str(tmp_path / "models"),
        )
    )
    task = Task(
        job_id=7,
        pipeline=PIPELINE,
        files=tuple(str(p) for p in series.paths),
        result_dir=str(tmp_path / "results" / "job-7"),
    )
    assert worker.run(task).descriptors is not None

    def broken(*args: object) -> str:
        raise ValueError("no histogram today")

    monkeypatch.setattr("dicomnode.runner.worker.describe", broken)
    again = Task(**{**task.__dict__, "job_id": 8, "result_dir": str(tmp_path / "results" / "j8")})
    with caplog.at_level(logging.WARNING, logger="dicomnode.runner.worker"):
        outcome = worker.run(again)
    assert outcome.ok and outcome.descriptors is None
    assert any("job 8: no descriptors" in r.getMessage() for r in caplog.records)
