"""The example configuration end to end: a CT pushed to the node ends as a
finished ct-lung run whose measurements are right."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import yaml

from dicomnode.jobs import JobState, SQLiteJobStore
from dicomnode.resultfile import load_result
from dicomnode.synthetic import Phantom, write_ct_series
from tests.helpers import free_port, wait_for
from tests.results.helpers import dciodvfy
from tests.test_cli import dicomnode

pytestmark = [pytest.mark.peers, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "dicomnode.example.yaml"


def test_example_config_routes_a_ct_to_ct_lung(node_process, tmp_path):
    config = yaml.safe_load(EXAMPLE.read_text())
    config["node"]["port"] = free_port()
    config["storage"]["data_dir"] = str(tmp_path / "var")
    config["destinations"]["results"]["path"] = str(tmp_path / "results")
    config["ingress"]["allowed_senders"].append({"ae_title": "SCANNER"})  # the tests' echo
    config["assembly"]["quiet_seconds"] = 1
    config["assembly"]["poll_seconds"] = 0.2
    config["runner"]["poll_seconds"] = 0.2
    config["console"]["port"] = free_port()
    node = node_process(config)
    # the console is on, on loopback, and asks for a login
    console = f"http://127.0.0.1:{config['console']['port']}"
    with urllib.request.urlopen(f"{console}/healthz", timeout=10) as answer:
        assert answer.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{console}/api/v1/studies", timeout=10)
    assert refused.value.code == 401
    # retention deletes patient data: the start-up log says what, where and when
    notice = wait_for(
        lambda: next((x for x in node.log().splitlines() if "retention is on" in x), None),
        30,
        "the retention notice",
    )
    assert "7 day(s) after its last activity" in notice
    assert str(tmp_path / "var" / "spool") in notice

    series = write_ct_series(tmp_path / "ct", slices=80, rows=128, columns=128, slice_thickness=2.5)
    sent = dicomnode(
        "send", str(tmp_path / "ct"), "--to", f"127.0.0.1:{node.port}", "--aet", "DICOMNODE", "-q"
    )
    assert sent.returncode == 0, sent.stderr

    store = SQLiteJobStore(tmp_path / "var" / "dicomnode.db")

    def finished():
        runs = [j for j in store.jobs(study_instance_uid=series.study_uid) if j.kind == "run"]
        done = [j for j in runs if j.state in (JobState.DONE, JobState.DEAD)]
        return done[0] if done else None

    config_results = Path(config["destinations"]["results"]["path"])
    run = wait_for(finished, 120, "the ct-lung run to finish", interval=0.3)
    assert run.state == JobState.DONE, run.reason
    assert (run.pipeline, run.rule, run.series_instance_uid) == (
        "ct-lung",
        "ct-chest-lungs",
        series.series_uid,
    )
    result, document = load_result(Path(run.result_dir))
    truth = Phantom().lung_volume_ml()
    volumes = {
        m.segment_label: m.value
        for m in result.measurements
        if m.concept.meaning == "Volume" and m.segment_label in (2, 3)
    }
    assert set(volumes) == {2, 3}
    for label, ml in volumes.items():
        assert ml == pytest.approx(truth, rel=0.05), (label, ml, truth)
    assert document["volume"]["shape"] == [80, 128, 128]
    assert "ct-lung" in node.log() and "PHANTOM" not in node.log()
    assert "highdicom" not in node.log()  # the libraries' chatter stays below INFO

    # the DICOM results wait in the spool's outbox, valid to the letter
    outbox = tmp_path / "var" / "spool" / "outbox" / f"job-{run.id}"
    objects = sorted(outbox.glob("*.dcm"))
    assert [p.name.split("_")[0] for p in objects] == ["SEG", "SR"]
    for path in objects:
        errors, _warnings = dciodvfy(path)
        assert errors == [], (path.name, errors)
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == series.study_uid
        assert ds.SeriesInstanceUID != series.series_uid
        assert ds.PatientID == "PHANTOM-001"
    seg = hd.seg.segread(objects[0])
    assert seg.number_of_segments == len(result.segments)
    assert "ct-lung" in seg.SeriesDescription

    # ...and were delivered to the example's folder destination, under the study
    delivered = sorted(p.name for p in (config_results / series.study_uid).rglob("*.dcm"))
    assert delivered == [p.name for p in objects]
    assert [(i.destination, i.state) for i in store.outbox(run.id)] == [
        ("results", "DELIVERED"),
        ("results", "DELIVERED"),
    ]
    assert [t.to_state for t in store.history(run.id)][-3:] == [
        JobState.RESULTS_WRITTEN,
        JobState.EXPORTING,
        JobState.DONE,
    ]
