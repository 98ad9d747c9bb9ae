"""`dicomnode evaluate` on a labelled set of phantoms with known masks.

The set is made here: CT phantoms of different lung sizes from
:mod:`dicomnode.synthetic`, reference SEGs built with highdicom from the
phantom's own geometry, and a labels CSV. Deliberately imperfect pipelines
(:mod:`tests.monitoring.imperfect`) make the scores less than perfect, and
every score is checked against a direct computation with numpy.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.monitoring.evaluate import evaluate
from dicomnode.monitoring.report import write_report
from dicomnode.synthetic import WATER_HU, Phantom, phantom_slice, write_ct_series
from tests.helpers import node_config, write_config
from tests.monitoring.imperfect import (
    BODY,
    LUNG,
    dilated,
    eroded,
    lung_probability,
    lung_truth,
)
from tests.test_cli import dicomnode
from tests.viewer import ARTIFACTS, ViewerUnavailable, launch_chromium

PLUGINS = tuple(
    f"tests.monitoring.imperfect:{name}"
    for name in ("ErodedLungs", "LungGuess", "MissesSmallLungs", "FailsOnSmallLungs")
)
SLICES, SIZE, THICKNESS = 10, 48, 10.0
SPACING = 400.0 / SIZE
LUNG_RADII = [40.0, 45.0, 50.0, 55.0, 60.0, 65.0]
LABELS = [0, 0, 1, 0, 1, 1]  # not perfectly ordered by lung size: AUC below 1
MANUFACTURERS = ["ACME", "Globex", "ACME", "Globex", "ACME", "Globex"]


def _truth_hu(phantom: Phantom) -> np.ndarray:
    z_center = (SLICES - 1) * THICKNESS / 2.0
    return np.stack(
        [
            phantom_slice(phantom, i * THICKNESS, SIZE, SIZE, SPACING, z_center)
            for i in range(SLICES)
        ]
    )


def _reference_seg(datasets: list[pydicom.Dataset], hu: np.ndarray) -> hd.seg.Segmentation:
    masks = np.stack([lung_truth(hu), hu == WATER_HU], axis=-1).astype(np.uint8)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(code.value, code.scheme, code.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label, code in ((1, "Lungs (reference)", LUNG), (2, "Body", BODY))
    ]
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Reader",
        manufacturer_model_name="manual",
        software_versions="1",
        device_serial_number="1",
    )


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Six studies with reference SEGs, a labels CSV and the truth behind them."""
    root = tmp_path_factory.mktemp("labelled") / "set"
    truth: dict[str, dict[str, Any]] = {}
    rows = []
    for index, radius in enumerate(LUNG_RADII):
        phantom = Phantom(lung_radii=(radius, 60.0, 35.0))
        series = write_ct_series(
            root / f"study{index}" / "ct",
            slices=SLICES,
            rows=SIZE,
            columns=SIZE,
            slice_thickness=THICKNESS,
            phantom=phantom,
            patient_name=f"SECRET^NAME{index}",
            patient_id=f"SECRET-ID-{index}",
        )
        datasets = []
        for path in series.paths:
            ds = pydicom.dcmread(path)
            ds.Manufacturer = MANUFACTURERS[index]
            ds.save_as(path)
            datasets.append(ds)
        hu = _truth_hu(phantom)
        seg = _reference_seg(datasets, hu)
        (root / f"study{index}" / "seg").mkdir()
        seg.save_as(root / f"study{index}" / "seg" / "reference.dcm")
        truth[series.study_uid] = {"hu": hu, "label": LABELS[index]}
        rows.append({"StudyInstanceUID": series.study_uid, "label": LABELS[index]})
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["StudyInstanceUID", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return {"root": root, "truth": truth}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def test_segmentation_scores_match_a_direct_computation(labelled_set, tmp_path):
    evaluation = evaluate(labelled_set["root"], "test-eroded-lungs", plugins=PLUGINS)
    metrics = evaluation.metrics
    assert metrics["set"] == {"studies": 6, "scored": 6, "errors": 0}
    voxel_ml = SPACING * SPACING * THICKNESS / 1000.0
    expected: dict[str, list[float]] = {"lungs": [], "body": []}
    for case in metrics["cases"]:
        hu = labelled_set["truth"][case["study_uid"]]["hu"]
        lungs = lung_truth(hu)
        predicted = {
            "lungs": (eroded(lungs), lungs),
            "body": (dilated(hu > -500) & ~eroded(lungs), hu == WATER_HU),
        }
        for name, (prediction, reference) in predicted.items():
            scores = case["structures"][name]
            dice = _dice(prediction, reference)
            expected[name].append(dice)
            assert scores["dice"] == pytest.approx(dice, abs=1e-6)
            error_ml = (float(prediction.sum()) - float(reference.sum())) * voxel_ml
            assert scores["volume_error_ml"] == pytest.approx(error_ml, rel=1e-6)
            assert scores["hd95_mm"] > 0 and scores["asd_mm"] > 0
            assert 0 < scores["surface_dice"] <= 1
        assert case["strata"]["Manufacturer"] in ("ACME", "Globex")
    lungs = metrics["segmentation"]["lungs"]
    # erosion loses the lungs' rim: far from perfect, and worse for small lungs
    assert 0.3 < lungs["dice"]["mean"] < 0.95
    assert lungs["dice"]["mean"] == pytest.approx(np.mean(expected["lungs"]))
    low, high = lungs["dice"]["ci95"]
    assert low < np.mean(expected["lungs"]) < high and low < high
    # the same seed gives the same interval
    again = evaluate(labelled_set["root"], "test-eroded-lungs", plugins=PLUGINS)
    assert again.metrics["segmentation"]["lungs"]["dice"]["ci95"] == lungs["dice"]["ci95"]
    acme = lungs["strata"]["Manufacturer"]["ACME"]["dice"]
    makers = [case["strata"]["Manufacturer"] for case in metrics["cases"]]
    acme_dice = [d for d, m in zip(expected["lungs"], makers, strict=True) if m == "ACME"]
    assert acme["n"] == 3 and acme["mean"] == pytest.approx(np.mean(acme_dice))
    assert metrics["segmentation"]["body"]["volume_error_ml"]["mean"] > 0  # dilated
    assert metrics["segmentation"]["lungs"]["volume_error_ml"]["mean"] < 0  # eroded


def _auc(labels: list[int], scores: list[float]) -> float:
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_classification_scores_match_a_direct_computation(labelled_set):
    evaluation = evaluate(labelled_set["root"], "test-lung-guess", plugins=PLUGINS)
    entry = evaluation.metrics["classification"]["Pulmonary emphysema"]
    truth = [labelled_set["truth"][c["study_uid"]] for c in evaluation.metrics["cases"]]
    labels = [t["label"] for t in truth]
    probabilities = [lung_probability(t["hu"]) for t in truth]
    assert entry["n"] == 6 and entry["threshold"] == 0.5
    auc = _auc(labels, probabilities)
    assert 0.5 < auc < 1.0
    assert entry["auc"]["value"] == pytest.approx(auc)
    low, high = entry["auc"]["ci95"]
    assert low <= auc <= high
    called = [p >= 0.5 for p in probabilities]
    tp = sum(c and y for c, y in zip(called, labels, strict=True))
    tn = sum(not c and not y for c, y in zip(called, labels, strict=True))
    assert entry["sensitivity"]["value"] == pytest.approx(tp / sum(labels))
    assert entry["specificity"]["value"] == pytest.approx(tn / (6 - sum(labels)))
    brier = np.mean([(p - y) ** 2 for p, y in zip(probabilities, labels, strict=True)])
    assert entry["brier"]["value"] == pytest.approx(brier)
    assert len(entry["roc"]["fpr"]) == len(entry["roc"]["tpr_low"])
    assert entry["reliability"]["mean_predicted"]


def test_evaluate_command_writes_a_report_that_renders(labelled_set, tmp_path):
    config = write_config(
        tmp_path / "node.yaml",
        node_config(tmp_path, runner={"plugins": list(PLUGINS), "device": "cpu"}),
    )
    out = tmp_path / "report"
    result = dicomnode(
        "evaluate",
        str(labelled_set["root"]),
        "--pipeline",
        "test-eroded-lungs",
        "--out",
        str(out),
        "-c",
        str(config),
    )
    assert result.returncode == 0, result.stderr
    assert "6 of 6 studies scored" in result.stdout
    assert "lungs: mean Dice" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pipeline"]["name"] == "test-eroded-lungs"
    page = (out / "index.html").read_text()
    for text in (out / "metrics.json").read_text(), page:
        assert "SECRET" not in text  # study UIDs only, no patient names or IDs
    assert "Not scored" not in page  # labels.csv is for classifiers, not an error here
    assert page.count("data:image/png;base64,") >= 4  # Dice plot + three worst cases
    try:
        with launch_chromium() as browser:
            tab = browser.new_page(viewport={"width": 1100, "height": 1400})
            tab.goto((out / "index.html").as_uri())
            tab.wait_for_function(
                "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
            assert tab.locator("h1").inner_text().startswith("Evaluation of test-eroded-lungs")
            assert tab.locator("figure").count() == 3
            shots = ARTIFACTS / "evaluate"
            shots.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(shots / "report.png"), full_page=True)
    except ViewerUnavailable as exc:
        pytest.skip(str(exc))


def test_a_classifier_report_has_roc_and_reliability(labelled_set, tmp_path):
    evaluation = evaluate(labelled_set["root"], "test-lung-guess", plugins=PLUGINS)
    page = write_report(evaluation, tmp_path / "report").read_text()
    assert 'alt="ROC Pulmonary emphysema"' in page
    assert 'alt="reliability Pulmonary emphysema"' in page


def _smallest(labelled_set: dict[str, Any]) -> str:
    truth = labelled_set["truth"]
    return min(truth, key=lambda uid: lung_truth(truth[uid]["hu"]).sum())


def test_a_structure_the_pipeline_missed_scores_zero_not_nothing(labelled_set):
    evaluation = evaluate(labelled_set["root"], "test-misses-small-lungs", plugins=PLUGINS)
    metrics = evaluation.metrics
    missed = next(c for c in metrics["cases"] if c["study_uid"] == _smallest(labelled_set))
    lungs = missed["structures"]["lungs"]
    assert lungs["missed"] is True and lungs["dice"] == 0.0
    assert lungs["volume_error_pct"] == pytest.approx(-100.0)
    assert metrics["segmentation"]["lungs"]["dice"]["n"] == 6
    found = [c["structures"]["lungs"]["dice"] for c in metrics["cases"] if c is not missed]
    assert metrics["segmentation"]["lungs"]["dice"]["mean"] == pytest.approx(sum(found) / 6)


def test_a_study_the_pipeline_fails_on_is_listed_not_fatal(labelled_set, tmp_path):
    evaluation = evaluate(labelled_set["root"], "test-fails-on-small-lungs", plugins=PLUGINS)
    metrics = evaluation.metrics
    assert metrics["set"] == {"studies": 6, "scored": 5, "errors": 1}
    failed = next(c for c in metrics["cases"] if "error" in c)
    assert failed["study_uid"] == _smallest(labelled_set)
    assert failed["error"] == "RuntimeError: the model fell over"
    assert metrics["segmentation"]["lungs"]["dice"]["n"] == 5
    page = write_report(evaluation, tmp_path / "report").read_text()
    assert "Not scored" in page and "the model fell over" in page


def test_a_set_without_references_is_refused(tmp_path):
    write_ct_series(tmp_path / "set" / "ct", slices=4, rows=16, columns=16)
    result = dicomnode(
        "evaluate", str(tmp_path / "set"), "--pipeline", "ct-lung", "--out", str(tmp_path / "r")
    )
    assert result.returncode == 1
    assert "has a reference SEG or a label; nothing to evaluate" in result.stderr
