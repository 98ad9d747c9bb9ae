"""MONAI detection bundles (RetinaNet) in the ``monai-bundle`` pipeline.

The bundle (:mod:`tests.pipelines.detection_bundle`) is laid out as the model
zoo's lung_nodule_ct_detection, with a tiny RetinaNet. What it should find is
computed here independently: MONAI's own ``RetinaNetDetector`` built in code
from the same weights, run on the volume turned to RAS, resized and scaled by
MONAI's transforms, its boxes mapped back to the volume's grid by hand.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
import yaml

from dicomnode.protocol import Volume
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import Series, write_ct_series
from pipelines.monai_bundle import MonaiBundlePipeline
from pipelines.monai_bundle.bundle import BundleError
from pipelines.monai_bundle.pipeline import LOCAL_SCHEME
from tests.pipelines.detection_bundle import (
    A_MAX,
    A_MIN,
    ANCHORS,
    PIXDIM,
    build_network,
    write_detection_bundle,
)
from tests.pipelines.test_nnunet import with_bright_block

NAMES = {"0": "nodule", "1": "mass"}
Expected = list[tuple[float, int, tuple[float, ...]]]


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Series, Volume]:
    series = write_ct_series(tmp_path_factory.mktemp("ct"), slices=12, rows=32, columns=32)
    with_bright_block(series, range(3, 7))
    return series, load_series(series.paths)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_detection_bundle(tmp_path_factory.mktemp("bundles") / "det", channel_def=NAMES)


def detect_directly(root: Path, volume: Volume) -> Expected:
    """(score, label, box in the volume's grid) of every box MONAI's detector
    gives for ``volume``, best first."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.transforms import Resize, ScaleIntensityRange

    # an axial series: columns along +x (patient left), rows +y (posterior),
    # slices +z (head); RAS is columns and rows reversed, slices as they are
    assert np.allclose(volume.row_direction, (1, 0, 0))
    assert np.allclose(volume.column_direction, (0, 1, 0))
    assert np.allclose(volume.slice_direction, (0, 0, 1))
    slices, rows, columns = volume.array.shape
    ras = volume.array.transpose(2, 1, 0)[::-1, ::-1, :].astype(np.float32)
    spacing = (volume.spacing[2], volume.spacing[1], volume.spacing[0])
    size = tuple(round(n * s / p) for n, s, p in zip(ras.shape, spacing, PIXDIM, strict=True))
    image = Resize(size, mode="trilinear")(torch.as_tensor(ras.copy())[None])
    image = ScaleIntensityRange(A_MIN, A_MAX, 0.0, 1.0, clip=True)(image)

    network = build_network(seed=99)  # other weights, replaced by the bundle's
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=ANCHORS["feature_map_scales"],
        base_anchor_shapes=ANCHORS["base_anchor_shapes"],
    )
    detector = RetinaNetDetector(network, anchors)
    detector.set_box_selector_parameters(
        score_thresh=0.0, topk_candidates_per_level=100, nms_thresh=0.22, detections_per_img=3
    )
    detector.set_sliding_window_inferer(
        roi_size=[32, 32, 16], overlap=0.25, sw_batch_size=1, mode="constant", device="cpu"
    )
    detector.eval()
    with torch.no_grad():
        (found,) = detector(torch.as_tensor(image)[None], use_inferer=True)
    scale = [n / s for n, s in zip(ras.shape, size, strict=True)]
    expected: Expected = []
    for box, score, label in zip(
        found["boxes"].tolist(), found["labels_scores"].tolist(), found["labels"].tolist(),
        strict=True,
    ):  # fmt: skip
        x0, y0, z0, x1, y1, z1 = box
        c0, c1 = columns - x1 * scale[0], columns - x0 * scale[0]
        r0, r1 = rows - y1 * scale[1], rows - y0 * scale[1]
        s0, s1 = z0 * scale[2], z1 * scale[2]
        placed = (max(s0, 0), max(r0, 0), max(c0, 0), min(s1, slices), min(r1, rows),
                  min(c1, columns))  # fmt: skip
        expected.append((float(score), int(label), placed))
    assert len(expected) == 3 and len({round(s, 6) for s, _, _ in expected}) == 3
    return sorted(expected, key=lambda e: -e[0])


def loaded(root: Path, **options: Any) -> MonaiBundlePipeline:
    pipeline = MonaiBundlePipeline()
    pipeline.configure({"bundle": str(root), **options})
    pipeline.load("cpu")
    return pipeline


def test_a_detection_bundle_gives_the_detectors_boxes_in_the_volumes_grid(
    bundle: Path, ct: tuple[Series, Volume]
) -> None:
    _, volume = ct
    expected = detect_directly(bundle, volume)
    pipeline = loaded(bundle)
    result = pipeline.run(volume, "cpu")
    # the bundle's box selector threshold (0.0) lets all three through
    assert [d.score for d in result.detections] == pytest.approx([e[0] for e in expected])
    for detection, (_, label, box) in zip(result.detections, expected, strict=True):
        assert detection.box == pytest.approx(box, abs=1e-4)
        assert detection.name == NAMES[str(label)]
        assert detection.concept.scheme == LOCAL_SCHEME
        assert detection.concept.value == f"MONAI{label}-{NAMES[str(label)].upper()}"
        assert detection.threshold == 0.0
    assert result.label_map is None and not result.findings
    assert result.models[0].name == "Tiny nodule detection"
    assert "3 finding(s)" in result.summary
    report = pipeline.self_test()
    assert report.input_contract.startswith("detection (RetinaNetDetector)")
    assert report.labels == ("0: nodule", "1: mass")


def test_the_score_threshold_and_class_names_of_the_node_yaml_win(
    bundle: Path, ct: tuple[Series, Volume]
) -> None:
    _, volume = ct
    expected = detect_directly(bundle, volume)
    between = (expected[1][0] + expected[2][0]) / 2
    result = loaded(bundle, score_threshold=between, labels={0: "lesion", 1: "lump"}).run(
        volume, "cpu"
    )
    assert [d.score for d in result.detections] == pytest.approx([e[0] for e in expected[:2]])
    assert {d.threshold for d in result.detections} == {between}
    assert [d.name for d in result.detections] == [
        {0: "lesion", 1: "lump"}[label] for _, label, _ in expected[:2]
    ]
    for bad in (1.5, "high"):
        with pytest.raises(BundleError, match=r"runner\.pipelines\.monai-bundle\.score_threshold"):
            MonaiBundlePipeline().configure({"bundle": str(bundle), "score_threshold": bad})


def test_weights_other_than_the_listed_ones_are_refused(tmp_path: Path) -> None:
    root = write_detection_bundle(tmp_path / "det")
    listing = yaml.safe_load((root / "large_files.yml").read_text(encoding="utf-8"))
    listing["large_files"][0]["hash_val"] = "0" * 64
    (root / "large_files.yml").write_text(yaml.safe_dump(listing), encoding="utf-8")
    with pytest.raises(BundleError, match="not the bundle's"):
        loaded(root)


@pytest.mark.peers
@pytest.mark.slow
def test_a_pushed_ct_gives_an_sr_group_per_box_and_an_oru_finding_per_box(
    make_settings: Any, start_node: Any, tmp_path: Path
) -> None:
    from tests.pipelines.test_exported import run_through_node, walk
    from tests.results.helpers import assert_sr_valid

    series = write_ct_series(tmp_path / "ct", slices=12, rows=32, columns=32)
    with_bright_block(series, range(3, 7))
    root = write_detection_bundle(tmp_path / "bundles" / "det", channel_def=NAMES)
    (tmp_path / "models").mkdir()
    volume = load_series(series.paths)
    expected = detect_directly(root, volume)
    threshold = (expected[1][0] + expected[2][0]) / 2
    options = {"bundle": str(root), "score_threshold": threshold}
    files, oru = run_through_node(
        make_settings, start_node, tmp_path, series, "monai-bundle", options
    )
    assert sorted(files) == ["SR"]
    assert_sr_valid(files["SR"])
    sr = pydicom.dcmread(files["SR"])
    groups = [
        item for item in walk(sr)
        if item.get("ValueType") == "CONTAINER"
        and item.ConceptNameCodeSequence[0].CodeValue == "125007"
    ]  # fmt: skip
    assert len(groups) == 2, "the third box is below the node's threshold"
    segments = oru.split("\r")
    boxes_in_oru = [s for s in segments if s.startswith("OBX") and "BOX^Bounding box" in s]
    assert len(boxes_in_oru) == 2
    for group, (score, label, box) in zip(groups, expected[:2], strict=True):
        s0, r0, c0, s1, r1, c1 = box
        middle = int((s0 + s1) / 2)
        items = walk(group)
        probability = next(
            i for i in items
            if i.get("ValueType") == "NUM"
            and i.ConceptNameCodeSequence[0].CodeMeaning == "Probability"
        )  # fmt: skip
        assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(
            score, abs=1e-5
        )
        finding = next(
            i for i in items
            if i.get("ValueType") == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"
        )  # fmt: skip
        code = finding.ConceptCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
            f"MONAI{label}-{NAMES[str(label)].upper()}", LOCAL_SCHEME, NAMES[str(label)]
        )  # fmt: skip
        outline = next(i for i in items if i.get("ValueType") == "SCOORD")
        points = np.asarray(outline.GraphicData, dtype=float).reshape(-1, 2)
        assert points.min(0) == pytest.approx([c0, r0], abs=1e-3)
        assert points.max(0) == pytest.approx([c1, r1], abs=1e-3)
        image = outline.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert image == volume.sources[middle].sop_instance_uid
        # the same rectangle in patient coordinates, in the central slice's plane
        (region,) = [i for i in items if i.get("ValueType") == "SCOORD3D"]
        source = pydicom.dcmread(series.paths[series.sop_uids.index(image)])
        position = np.asarray(source.ImagePositionPatient, dtype=float)
        rowdir = np.asarray(source.ImageOrientationPatient[:3], dtype=float)
        coldir = np.asarray(source.ImageOrientationPatient[3:], dtype=float)
        dy, dx = (float(v) for v in source.PixelSpacing)
        corners = np.asarray(region.GraphicData, dtype=float).reshape(-1, 3)
        assert corners.min(0) == pytest.approx(
            position + (c0 - 0.5) * dx * rowdir + (r0 - 0.5) * dy * coldir, abs=1e-2
        )
        # the ORU lists the finding, coded, with its score and where it is
        coded = [s.split("|") for s in segments if s.startswith("OBX|") and code.CodeValue in s]
        assert any(
            f[2] == "NM" and float(f[5]) == pytest.approx(score, abs=1e-3) and f[8] == "A"
            for f in coded
        ), coded
        assert any(
            f"central slice {middle + 1} of 12" in s
            and f"rows {int(r0) + 1}-{math.ceil(r1)} of 32" in s
            and f"columns {int(c0) + 1}-{math.ceil(c1)} of 32" in s
            for s in boxes_in_oru
        ), boxes_in_oru


def test_models_check_runs_the_detector_with_the_yaml_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from dicomnode.cli import main
    from tests.runner.test_models_check import config_file

    root = write_detection_bundle(tmp_path / "det")
    options = {"bundle": str(root), "score_threshold": 0.7, "labels": {0: "nodule", 1: "mass"}}
    config = config_file(tmp_path, {"monai-bundle": options})
    assert main(["models", "check", "-c", str(config), "--json"]) == 0
    (check,) = json.loads(capsys.readouterr().out)
    assert check["ok"], check
    report = check["report"]
    assert report["labels"] == ["0: nodule", "1: mass"]
    assert report["input_contract"].startswith("detection (RetinaNetDetector), modalities CT")
    assert "score threshold 0.7" in report["input_contract"]
    assert report["output"].startswith("input (1, 1, 32, 32, 32) -> ")
    assert (
        report["sha256"] == hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest()
    )
