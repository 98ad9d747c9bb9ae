"""Orthanc as the PACS: it auto-routes a CT to the node, and the node's SEG and
SR come back into the same study in Orthanc; a PACS that is down only delays."""

from __future__ import annotations

import urllib.request

import pydicom
import pytest

from dicomnode.jobs import JobState
from dicomnode.synthetic import write_ct_series
from tests.conftest import open_store
from tests.helpers import storescu, wait_for
from tests.orthanc import Orthanc

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def node_settings(make_settings, orthanc: Orthanc):
    return make_settings(
        ingress={"allowed_senders": [{"ae_title": "ORTHANC"}, {"ae_title": "SCANNER"}]},
        assembly={"quiet_seconds": 2, "poll_seconds": 0.1},
        runner={"enabled": True, "device": "cpu", "threads": 1, "poll_seconds": 0.1},
        routing={
            "rules": [
                {
                    "name": "ct",
                    "match": {"series": {"Modality": {"equals": "CT"}}},
                    "pipeline": "ct-lung",
                    "destinations": ["pacs"],
                }
            ]
        },
        destinations={
            "pacs": {
                "type": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "timeout_seconds": 10,
            }
        },
        export={"poll_seconds": 0.2, "backoff_seconds": 1, "max_backoff_seconds": 2},
    )


def get_bytes(orthanc: Orthanc, path: str) -> bytes:
    with urllib.request.urlopen(orthanc.url(path), timeout=30) as response:
        return bytes(response.read())


def test_orthanc_pushes_a_ct_and_gets_seg_and_sr_back(make_settings, start_node, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc")
    settings = node_settings(make_settings, orthanc)
    orthanc.modalities = {"node": ["DICOMNODE", "127.0.0.1", settings.node.port]}
    try:
        orthanc.start()
        start_node(settings)
        series = write_ct_series(tmp_path / "ct", slices=40, rows=96, columns=96)
        study = orthanc.upload(series.paths)
        orthanc.post("/modalities/node/store", f'"{study}"')  # the PACS auto-routes

        def results_back():
            found = orthanc.get(f"/studies/{study}/series")
            modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in found)
            return found if modalities == ["CT", "SEG", "SR"] else None

        found = wait_for(results_back, 120, "SEG and SR in Orthanc's study", interval=0.5)
        for item in orthanc.get(f"/studies/{study}/instances"):
            tags = orthanc.get(f"/instances/{item['ID']}/simplified-tags")
            assert tags["StudyInstanceUID"] == series.study_uid
            assert tags["PatientID"] == "PHANTOM-001"
        store = open_store(settings)
        (run,) = [j for j in store.jobs() if j.kind == "run"]
        wait_for(lambda: store.get_job(run.id).state == JobState.DONE, 30, "the run to be DONE")
        seg_series = next(s for s in found if s["MainDicomTags"]["Modality"] == "SEG")
        (tmp_path / "seg.dcm").write_bytes(
            get_bytes(orthanc, f"/instances/{seg_series['Instances'][0]}/file")
        )
        seg = pydicom.dcmread(tmp_path / "seg.dcm")
        labels = [str(s.SegmentLabel).lower() for s in seg.SegmentSequence]
        assert {"right lung", "left lung"} <= set(labels), labels
    finally:
        orthanc.stop()


def test_a_pacs_that_is_down_only_delays_and_nothing_arrives_twice(
    make_settings, start_node, ct_series, tmp_path
):
    orthanc = Orthanc(tmp_path / "orthanc")
    settings = node_settings(make_settings, orthanc)  # Orthanc not started: port closed
    start_node(settings)
    series = ct_series(slices=30, size=64)
    assert storescu(series.paths, settings.node.port).returncode == 0
    store = open_store(settings)

    def failed_once():
        runs = [j for j in store.jobs() if j.kind == "run"]
        if not runs:
            return None
        items = store.outbox(runs[0].id)
        return runs[0] if items and all(i.attempts >= 1 for i in items) else None

    run = wait_for(failed_once, 90, "a failed delivery attempt", interval=0.3)
    items = store.outbox(run.id)
    assert {i.state for i in items} == {"PENDING"}
    assert "could not be established" in (items[0].last_error or "")
    assert len({i.attempts for i in items}) == 1  # one retry per study, not per file
    try:
        orthanc.start()

        def done():
            job = store.get_job(run.id)
            return job if job.state in (JobState.DONE, JobState.DEAD) else None

        assert wait_for(done, 60, "delivery after the PACS came back").state == JobState.DONE
        assert orthanc.get("/statistics")["CountInstances"] == 2  # SEG and SR, once each
    finally:
        orthanc.stop()
