"""Shadow mode, radiologists' corrections and the validated input range, in a
running node with real peers: DCMTK storescu as the scanner and the viewer,
Orthanc as the PACS, hl7apy's MLLP server as the RIS, PixelMed's validator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from hl7apy.parser import parse_message
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode.cli import main
from dicomnode.config import load_config
from dicomnode.jobs import JobState
from dicomnode.monitoring.shadow import compare_results, summarize
from dicomnode.protocol import Code, Finding, PipelineResult
from tests.conftest import open_store
from tests.export.mllp_ris import running_ris
from tests.helpers import node_config, store_statuses, storescu, wait_for, write_config
from tests.monitoring.imperfect import EMPHYSEMA, dilated, eroded, lung_truth
from tests.orthanc import Orthanc
from tests.results.helpers import pixelmed

PLUGINS = [
    "tests.monitoring.imperfect:ErodedLungs",
    "tests.monitoring.imperfect:DilatedLungs",
    "tests.monitoring.imperfect:ThinSlicesOnly",
]
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def runner(**extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "device": "cpu",
        "threads": 1,
        "workers": 2,
        "poll_seconds": 0.1,
        "plugins": PLUGINS,
        **extra,
    }


def hu_volume(paths: list[Path]) -> tuple[np.ndarray, list[Dataset]]:
    """The series' HU values in slice-position order, and its datasets in that order."""
    datasets = sorted(
        (pydicom.dcmread(p) for p in paths), key=lambda ds: float(ds.ImagePositionPatient[2])
    )
    hu = np.stack(
        [
            ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in datasets
        ]
    )
    return hu, datasets


def labels_of(hu: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Label map as the test pipelines make it: body 2 (dilated), lungs 1 on top."""
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[dilated(hu > -500)] = 2
    labels[lungs] = 1
    return labels


def numpy_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def runs_of(store: Any, study_uid: str) -> list[Any]:
    return [j for j in store.jobs(study_instance_uid=study_uid) if j.kind == "run"]


def settled(store: Any, study_uid: str, count: int) -> list[Any] | None:
    runs = runs_of(store, study_uid)
    finished = [j for j in runs if j.state in (JobState.DONE, JobState.DEAD)]
    return runs if len(runs) == count and len(finished) == count else None


# --- agreement numbers against direct computations ---


def test_classifier_agreement_and_probability_differences() -> None:
    other = Code("233604007", "SCT", "Pneumonia")
    production = PipelineResult(
        findings=(Finding(EMPHYSEMA, 0.70, threshold=0.5), Finding(other, 0.20, threshold=0.5))
    )
    candidate = PipelineResult(
        findings=(Finding(EMPHYSEMA, 0.40, threshold=0.5), Finding(other, 0.30, threshold=0.5))
    )
    document = compare_results(production, candidate)
    emphysema = document["findings"]["Pulmonary emphysema"]
    assert emphysema["agree"] is False
    assert emphysema["difference"] == pytest.approx(-0.30)
    assert document["findings"]["Pneumonia"]["agree"] is True
    rows = [
        {
            "rule": "r",
            "production_pipeline": "a",
            "candidate_pipeline": "b",
            "at": 1.0,
            "json": json.dumps(document),
        },
        {
            "rule": "r",
            "production_pipeline": "a",
            "candidate_pipeline": "b",
            "at": 2.0,
            "json": json.dumps(compare_results(production, production)),
        },
    ]
    (summary,) = summarize(rows)
    assert summary.studies == 2
    assert summary.findings["Pulmonary emphysema"]["agreement"] == pytest.approx(0.5)
    assert summary.findings["Pulmonary emphysema"]["mean_abs_difference"] == pytest.approx(0.15)
    assert summary.findings["Pneumonia"]["agreement"] == pytest.approx(1.0)


# --- shadow mode and a corrected SEG, in one running node ---


def corrected_seg(
    datasets: list[Dataset], lungs: np.ndarray, body: np.ndarray, ours: Dataset
) -> Dataset:
    """A viewer's corrected SEG: new UIDs, the changed masks, referencing our SEG."""
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label, kind in (
            (1, "lungs (edited)", pydicom.sr.coding.Code("39607008", "SCT", "Lung")),
            (2, "body", pydicom.sr.coding.Code("38266002", "SCT", "Entire body")),
        )
    ]
    mask = np.stack([lungs, body], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=42,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Viewer",
        manufacturer_model_name="Editor",
        software_versions="1",
        device_serial_number="1",
    )
    reference = Dataset()
    reference.SeriesInstanceUID = ours.SeriesInstanceUID
    item = Dataset()
    item.ReferencedSOPClassUID = ours.SOPClassUID
    item.ReferencedSOPInstanceUID = ours.SOPInstanceUID
    reference.ReferencedInstanceSequence = [item]
    seg.ReferencedSeriesSequence.append(reference)
    return seg


@pytest.mark.peers
@pytest.mark.slow
def test_shadow_delivers_nothing_and_a_correction_is_scored_not_routed(
    start_node, ct_series, tmp_path, capsys
):
    orthanc = Orthanc(tmp_path / "orthanc")
    try:
        orthanc.start()
        with running_ris("AA") as ris:
            config = node_config(
                tmp_path,
                assembly={"quiet_seconds": 1.5, "poll_seconds": 0.1},
                runner=runner(),
                monitoring={"poll_seconds": 0.5},
                routing={
                    "rules": [
                        {
                            "name": "lungs",
                            "match": {"series": {"Modality": {"equals": "CT"}}},
                            "pipeline": "test-eroded-lungs",
                            "shadow": {"pipeline": "test-dilated-lungs"},
                            "destinations": ["pacs"],
                            "notify": ["ris"],
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
                    },
                    "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port},
                },
                export={"poll_seconds": 0.2, "backoff_seconds": 0.5, "max_backoff_seconds": 1},
            )
            config_path = write_config(tmp_path / "node.yaml", config)
            settings = load_config(config_path)
            start_node(settings)
            series = ct_series(slices=8, size=48)
            assert storescu(series.paths, settings.node.port).returncode == 0
            store = open_store(settings)
            runs = wait_for(
                lambda: settled(store, series.study_uid, 2), 120, "both runs", interval=0.2
            )
            production = next(j for j in runs if not j.shadow)
            shadow = next(j for j in runs if j.shadow)
            assert (production.pipeline, shadow.pipeline) == (
                "test-eroded-lungs",
                "test-dilated-lungs",
            )
            assert production.state == JobState.DONE and shadow.state == JobState.DONE
            assert store.outbox(shadow.id) == []
            kept = settings.storage.spool_path / "outbox" / "shadow" / f"job-{shadow.id}"
            assert len(list(kept.glob("SEG_*.dcm"))) == 1  # kept, marked shadow
            wait_for(lambda: store.agreements(), 60, "the agreement", interval=0.2)

            # only the production results reached the PACS and the RIS
            delivered = [
                i.sop_instance_uid for i in store.outbox(production.id) if i.kind == "dicom"
            ]
            in_pacs = [
                orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                for i in orthanc.get("/instances")
            ]
            assert sorted(in_pacs) == sorted(delivered) and len(in_pacs) == 1
            assert len(ris.received) == 1

            # the agreement equals a direct comparison of the two label maps
            hu, datasets = hu_volume(series.paths)
            ours = labels_of(hu, eroded(lung_truth(hu)))
            theirs = labels_of(hu, dilated(lung_truth(hu)))
            assert main(["shadow", "report", "--json", "-c", str(config_path)]) == 0
            report = json.loads(capsys.readouterr().out)
            (pair,) = report["pairs"]
            assert (pair["rule"], pair["studies"]) == ("lungs", 1)
            for name, label in (("lungs", 1), ("body", 2)):
                expected = numpy_dice(theirs == label, ours == label)
                assert pair["structures"][name]["mean_dice"] == pytest.approx(expected, rel=1e-5)
            assert pair["structures"]["lungs"]["mean_dice"] < 0.95

            # a radiologist's correction comes back from the viewer
            seg_path = next(
                Path(i.path) for i in store.outbox(production.id) if i.sop_class_uid == SEG_STORAGE
            )
            our_seg = pydicom.dcmread(seg_path)
            lungs = ours == 1
            edited = lungs.copy()
            edited[:2] = False
            edited[4, 10:14, 10:14] = True
            body = ours == 2
            fixed = corrected_seg(datasets, edited, body, our_seg)
            fixed_path = tmp_path / "corrected.dcm"
            fixed.save_as(fixed_path, enforce_file_format=True)
            sent = storescu([fixed_path], settings.node.port, extra=["-R"])
            assert store_statuses(sent.stderr) == ["Success"], sent.stderr
            scored = wait_for(
                lambda: [c for c in store.corrections() if c["state"] != "PENDING"],
                60,
                "the correction to be scored",
                interval=0.2,
            )
            (correction,) = scored
            assert correction["state"] == "SCORED", correction["reason"]
            assert correction["job_id"] == production.id
            assert correction["matched_by"] == "sop_instance_uid"
            assert len(runs_of(store, series.study_uid)) == 2  # nothing new ran
            rounds = [
                j for j in store.jobs(study_instance_uid=series.study_uid) if j.kind == "study"
            ]
            assert rounds[0].state == JobState.DISCARDED
            assert "corrected SEG" in (rounds[0].reason or "")
            scores = json.loads(str(correction["scores"]))["segments"]
            assert scores["lungs"]["dice"] == pytest.approx(numpy_dice(lungs, edited), rel=1e-5)
            assert scores["lungs"]["dice"] < 0.99
            assert scores["body"]["dice"] == pytest.approx(1.0)
            measures = our_seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
            voxel_ml = (
                float(measures.PixelSpacing[0])
                * float(measures.PixelSpacing[1])
                * float(measures.SliceThickness)
                / 1000
            )
            assert scores["lungs"]["volume_difference_ml"] == pytest.approx(
                (int(edited.sum()) - int(lungs.sum())) * voxel_ml
            )
            assert main(["corrections", "--json", "-c", str(config_path)]) == 0
            listed = json.loads(capsys.readouterr().out)
            assert [c["sop_instance_uid"] for c in listed] == [str(fixed.SOPInstanceUID)]
            # still only the production objects in the PACS, one message at the RIS
            assert len(orthanc.get("/instances")) == 1 and len(ris.received) == 1
    finally:
        orthanc.stop()


# --- the validated input range: flagged in the SR and the ORU, or refused ---


@pytest.mark.peers
@pytest.mark.slow
def test_out_of_range_input_is_flagged_or_refused(start_node, ct_series, tmp_path):
    with running_ris("AA") as ris:

        def rule(name: str, out_of_range: str) -> dict[str, Any]:
            return {
                "name": name,
                "match": {"series": {"SeriesDescription": {"equals": name}}},
                "pipeline": "test-thin-slices",
                "destinations": ["disk"],
                "notify": ["ris"],
                "out_of_range": out_of_range,
            }

        config = node_config(
            tmp_path,
            assembly={"quiet_seconds": 1.5, "poll_seconds": 0.1},
            runner=runner(),
            routing={"rules": [rule("flag", "flag"), rule("refuse", "refuse")]},
            destinations={
                "disk": {"type": "folder", "path": str(tmp_path / "disk")},
                "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port},
            },
            export={"poll_seconds": 0.2, "backoff_seconds": 0.5, "max_backoff_seconds": 1},
        )
        settings = load_config(write_config(tmp_path / "node.yaml", config))
        start_node(settings)
        store = open_store(settings)
        pushed = {}
        for name in ("flag", "refuse"):
            series = ct_series(slices=6, size=48, name=name, slice_thickness=5.0)
            for path in series.paths:
                ds = pydicom.dcmread(path)
                ds.SeriesDescription = name
                ds.save_as(path)
            assert storescu(series.paths, settings.node.port).returncode == 0
            pushed[name] = wait_for(
                lambda s=series: settled(store, s.study_uid, 1), 120, f"the {name} run"
            )[0]
        flagged, refused = pushed["flag"], pushed["refuse"]

        assert refused.state == JobState.DEAD
        assert "outside the validated range" in (refused.reason or "")
        assert "slice thickness 5 mm" in (refused.reason or "")
        assert store.outbox(refused.id) == []

        assert flagged.state == JobState.DONE
        srs = [
            Path(i.path) for i in store.outbox(flagged.id) if i.kind == "dicom" and "SR_" in i.path
        ]
        assert len(srs) == 1
        delivered = tmp_path / "disk"
        sr_file = next(p for p in delivered.rglob("*.dcm") if pydicom.dcmread(p).Modality == "SR")
        errors, _ = pixelmed(sr_file)
        assert errors == []
        texts = [
            str(item.TextValue)
            for item in _content_items(pydicom.dcmread(sr_file))
            if item.ValueType == "TEXT"
        ]
        assert any(
            "outside the validated range" in t and "slice thickness 5 mm" in t for t in texts
        )

        assert len(ris.received) == 1  # the refused run sent nothing
        message = parse_message(ris.received[0].replace("\n", "\r"))
        notes = [
            segment.to_er7()
            for segment in message.children[1].children[1].children
            if segment.name == "NTE"
        ]
        assert any("validated range" in n and "slice thickness 5 mm" in n for n in notes), notes


def _content_items(ds: Dataset) -> list[Dataset]:
    found = []
    for item in ds.get("ContentSequence", []):
        found.append(item)
        found.extend(_content_items(item))
    return found


def test_promote_rewrites_the_rule_keeps_a_backup_and_records_it(tmp_path, capsys) -> None:
    config = node_config(
        tmp_path,
        routing={
            "rules": [
                {
                    "name": "lungs",
                    "pipeline": "test-eroded-lungs",
                    "shadow": {"pipeline": "test-dilated-lungs"},
                }
            ]
        },
    )
    path = write_config(tmp_path / "node.yaml", config)
    original = path.read_text()
    settings = load_config(path)
    open_store(settings).close()  # the node has run once
    assert main(["shadow", "promote", "lungs", "-c", str(path)]) == 0
    rewritten = yaml.safe_load(path.read_text())
    (rule,) = rewritten["routing"]["rules"]
    assert rule["pipeline"] == "test-dilated-lungs" and "shadow" not in rule
    (backup,) = tmp_path.glob("node.yaml.*.bak")
    assert backup.read_text() == original
    load_config(path)  # still valid
    capsys.readouterr()
    assert main(["shadow", "report", "--json", "-c", str(path)]) == 0
    (promotion,) = json.loads(capsys.readouterr().out)["promotions"]
    assert (promotion["rule"], promotion["from_pipeline"], promotion["to_pipeline"]) == (
        "lungs",
        "test-eroded-lungs",
        "test-dilated-lungs",
    )
    assert promotion["backup_path"] == str(backup.resolve())
    # a second promotion has no candidate left: refused, the file unchanged
    before = path.read_text()
    assert main(["shadow", "promote", "lungs", "-c", str(path)]) != 0
    assert path.read_text() == before


@pytest.mark.peers
@pytest.mark.slow
def test_the_flag_beside_ct_lung_segment_groups_is_a_valid_sr(tmp_path) -> None:
    """Beside TID 1411 segment groups the flag is a TID 1411 group too: PixelMed
    checks all groups of a report against one template."""
    import dataclasses

    from dicomnode.results.writer import DicomResultWriter
    from dicomnode.synthetic import write_ct_series
    from pipelines.ct_lung import CTLungPipeline
    from tests.results.helpers import assert_valid, context, load

    series = write_ct_series(tmp_path / "ct", slices=24, rows=64, columns=64)
    volume, _ = load(series.paths)
    result = CTLungPipeline().run(volume, "cpu")
    reason = "slice thickness 5 mm, validated on 0.5 to 3 mm"
    ctx = dataclasses.replace(context(series.paths, tmp_path / "out"), out_of_range=(reason,))
    written = DicomResultWriter().write(result, volume, ctx)
    (sr_path,) = [o.path for o in written.objects if o.kind == "SR"]
    errors, _ = pixelmed(sr_path)
    assert errors == []
    assert_valid(sr_path)
    texts = [
        str(i.TextValue) for i in _content_items(pydicom.dcmread(sr_path)) if i.ValueType == "TEXT"
    ]
    assert any(reason in t for t in texts)
    (message,) = written.messages if written.messages else (None,)
    assert message is None  # no HL7 receiver in this context
