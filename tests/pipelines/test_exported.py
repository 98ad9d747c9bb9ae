"""The ``torchscript`` and ``onnx`` pipelines on tiny networks exported by the tests.

The networks (:mod:`tests.pipelines.exported_models`) label Hounsfield units
by thresholds, so the label map, and the SEG frames made from it, can be
checked against the source slices themselves.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
import yaml

from dicomnode.errors import ModelError
from dicomnode.jobs import JobState
from dicomnode.protocol import InputRefused, Volume
from dicomnode.runner.manifest import verify_model
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import Series, write_ct_series
from pipelines.exported import OnnxPipeline, TorchScriptPipeline
from pipelines.exported.pipeline import ExportedPipeline
from tests.pipelines.exported_models import (
    LIVER,
    expected_labels,
    segmentation_card,
    write_model,
)
from tests.pipelines.test_nnunet import with_bright_block

PIPELINES: dict[str, type[ExportedPipeline]] = {
    "torchscript": TorchScriptPipeline,
    "onnx": OnnxPipeline,
}


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Series, Volume]:
    series = write_ct_series(tmp_path_factory.mktemp("ct"), slices=12, rows=32, columns=32)
    with_bright_block(series, range(3, 7))
    return series, load_series(series.paths)


def loaded(kind: str, models_dir: Path, name: str = "tiny") -> ExportedPipeline:
    pipeline = PIPELINES[kind]()
    pipeline.configure({"model": name})
    pipeline.load("cpu", {name: verify_model(models_dir, name)})
    return pipeline


@pytest.mark.parametrize(
    ("kind", "window"),
    [("torchscript", None), ("onnx", None), ("onnx", [8, 8, 8]), ("torchscript", [8, 8, 4])],
)
def test_the_label_map_is_the_networks_voxel_for_voxel(
    tmp_path: Path, ct: tuple[Series, Volume], kind: str, window: list[int] | None
) -> None:
    _, volume = ct
    extra = {"sliding_window": {"roi_size": window, "overlap": 0.25}} if window else {}
    write_model(tmp_path, kind, segmentation_card(**extra))
    result = loaded(kind, tmp_path).run(volume, "cpu")
    assert result.label_map is not None
    assert np.array_equal(result.label_map, expected_labels(volume.array))
    liver, dense = result.segments
    assert (liver.name, liver.type.value, liver.category.value) == ("liver", "10200004", "91723000")
    assert (dense.name, dense.category.value) == ("dense", "85756007")
    volume_ml = {m.segment_label: m.value for m in result.measurements}
    count = int((expected_labels(volume.array) == 1).sum())
    assert volume_ml[1] == pytest.approx(count * volume.voxel_volume_ml)
    (model,) = result.models
    weights = tmp_path / "tiny" / ("model.pt" if kind == "torchscript" else "model.onnx")
    assert model.sha256 == verify_model(tmp_path, "tiny").sha256 == _sha(weights)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resampling_and_normalisation_follow_the_card(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    """At half the slice resolution the labels still land on the bright block;
    with HU scaled to [0, 0.001] by the card, the network's thresholds (in
    HU) are never met."""
    _, volume = ct
    card = segmentation_card(spacing=[12.5, 12.5, 5.0])
    write_model(tmp_path, "torchscript", card)
    result = loaded("torchscript", tmp_path).run(volume, "cpu")
    assert result.label_map is not None and result.label_map.shape == volume.array.shape
    expected = expected_labels(volume.array)
    a, b = result.label_map > 0, expected > 0
    # half as many slices: the block's edge slices blur below the threshold,
    # but what is labelled lies on the block
    assert int((a & b).sum()) / int(a.sum()) > 0.95
    assert int((a & b).sum()) / int(b.sum()) > 0.4
    card = segmentation_card(normalisation={"kind": "range", "a_min": 0, "a_max": 1, "b_min": 0,
                                            "b_max": 0.001})  # fmt: skip
    write_model(tmp_path, "torchscript", card)
    result = loaded("torchscript", tmp_path).run(volume, "cpu")
    assert result.label_map is not None and not result.label_map.any()
    assert result.summary.endswith("liver not found; dense not found.")


def test_a_sigmoid_card_thresholds_each_channel(tmp_path: Path, ct: tuple[Series, Volume]) -> None:
    _, volume = ct
    card = segmentation_card()
    card["output"]["activation"] = "sigmoid"
    card["output"]["labels"] = {1: {"name": "liver", "type": LIVER}}
    card["output"]["thresholds"] = {"liver": 0.5}
    write_model(tmp_path, "torchscript", card)
    result = loaded("torchscript", tmp_path).run(volume, "cpu")
    # channel 0 (logit 0, probability 0.5) reaches 0.5 everywhere, channel 1 above 100 HU
    assert result.label_map is not None
    assert result.label_map.all()
    card["output"]["thresholds"] = {"liver": 0.6}
    write_model(tmp_path, "torchscript", card)
    result = loaded("torchscript", tmp_path).run(volume, "cpu")
    assert result.label_map is not None and not result.label_map.any()


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3, 4))
        return torch.cat([mean / 100.0, -mean / 100.0], dim=1)


def test_a_classification_card_gives_findings_with_thresholds(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    _, volume = ct
    card = {
        "task": "classification",
        "modalities": ["CT"],
        "input": {"orientation": "RAS", "shape": [8, 8, 4]},
        "output": {
            "activation": "sigmoid",
            "labels": {0: {"name": "dense", "type": LIVER}, 1: {"name": "light", "type": LIVER}},
            "thresholds": {"dense": 0.5},
        },
    }
    write_model(tmp_path, "onnx", card, network=_Mean())
    result = loaded("onnx", tmp_path).run(volume, "cpu")
    dense, light = result.findings
    resized = torch.nn.functional.interpolate(
        torch.as_tensor(volume.array)[None, None], size=(4, 8, 8), mode="trilinear"
    )
    mean = float(resized.mean())
    assert dense.probability == pytest.approx(1 / (1 + np.exp(-mean / 100)), abs=1e-4)
    assert dense.threshold == 0.5 and light.threshold is None
    assert dense.positive == (mean > 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "regression"}, r"task: Input should be 'segmentation'"),
        ({"input": {"shape": [8, 8]}}, r"input\.shape\.2: Field required"),
        ({"input": {"orientation": "RAR", "shape": [8, 8, 8]}},
         r"input: Value error, orientation 'RAR' names a world axis twice"),
        ({"input": {}}, r"input\.shape: needed when there is no input\.sliding_window"),
        ({"input": {"shape": [8, 8, 8], "normalisation": {"kind": "range"}}},
         r"input\.normalisation: Value error, kind range needs a_min and a_max"),
        ({"output": {"labels": {1: {"name": "x", "type": {"value": "1", "scheme": "SCT"}}}}},
         r"output\.labels\.1\.type\.meaning: Field required"),
        ({"output": {"labels": {1: {"name": "x", "type": LIVER}}, "thresholds": {"y": 0.5}}},
         r"output: Value error, thresholds of no label: y"),
        ({"modalities": ["ct"]}, r"modalities\.0: "),
    ],
)  # fmt: skip
def test_a_card_error_names_the_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    write_model(tmp_path, "torchscript", {**segmentation_card(), **change})
    pipeline = TorchScriptPipeline()
    pipeline.configure({"model": "tiny"})
    with pytest.raises(InputRefused, match=r"model card .*card\.yaml: .*" + message):
        pipeline.check_setup({"tiny": verify_model(tmp_path, "tiny")})


def test_a_wrong_sha256_or_an_unlisted_card_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    manifest = write_model(tmp_path, "onnx", segmentation_card())
    weights = tmp_path / "tiny" / "model.onnx"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ModelError, match=r"model\.onnx has SHA-256 .* refusing to load it"):
        verify_model(tmp_path, "tiny")
    manifest = write_model(tmp_path, "onnx", segmentation_card())
    card = tmp_path / "tiny" / "card.yaml"
    card.write_text(card.read_text().replace("liver", "lever"))
    with pytest.raises(ModelError, match=r"card\.yaml has SHA-256"):
        verify_model(tmp_path, "tiny")
    write_model(tmp_path, "onnx", segmentation_card())
    data = yaml.safe_load(manifest.read_text())
    data["files"] = []
    manifest.write_text(yaml.safe_dump(data))
    with pytest.raises(InputRefused, match=r"card\.yaml is not in the manifest's files"):
        loaded("onnx", tmp_path)
    write_model(tmp_path, "torchscript", segmentation_card())
    with pytest.raises(InputRefused, match=r"model\.pt is not a \.onnx file"):
        loaded("onnx", tmp_path)


def test_a_network_that_does_not_fit_its_card_is_refused_by_the_setup_check(
    tmp_path: Path,
) -> None:
    card = segmentation_card()
    card["output"]["labels"][3] = {"name": "more", "type": LIVER}
    write_model(tmp_path, "torchscript", card)
    pipeline = TorchScriptPipeline()
    pipeline.configure({"model": "tiny"})
    with pytest.raises(
        InputRefused, match=r"output \(1, 3, 16, 16, 8\); the card .* needs \(1, 4\+"
    ):
        pipeline.check_setup({"tiny": verify_model(tmp_path, "tiny")})
    # a network that cannot take the card's shape: a clear refusal, not a crash
    card = segmentation_card(channels=2)
    write_model(tmp_path, "onnx", card)
    pipeline = OnnxPipeline()
    pipeline.configure({"model": "tiny"})
    with pytest.raises(InputRefused, match=r"fails on an input \(1, 2, 16, 16, 8\)"):
        pipeline.check_setup({"tiny": verify_model(tmp_path, "tiny")})
    with pytest.raises(InputRefused, match=r"runner\.pipelines\.torchscript\.model"):
        TorchScriptPipeline().check_setup({})
    with pytest.raises(InputRefused, match="no option bundle"):
        OnnxPipeline().configure({"bundle": "/x"})


# --- through the node: storescu in, SEG + SR in Orthanc, ORU at the RIS -------------------------


def fetch_results(orthanc: Any, into: Path) -> dict[str, Path]:
    """The SEG and SR Orthanc holds, saved under ``into``."""
    files: dict[str, Path] = {}
    for instance in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{instance}/simplified-tags")
        if tags["Modality"] in ("SEG", "SR"):
            path = into / f"{tags['Modality']}.dcm"
            with urllib.request.urlopen(orthanc.url(f"/instances/{instance}/file")) as r:
                path.write_bytes(r.read())
            files[tags["Modality"]] = path
    return files


def run_through_node(
    make_settings: Any,
    start_node: Any,
    tmp_path: Path,
    series: Series,
    kind: str,
    options: dict[str, Any] | None = None,
) -> tuple[dict[str, Path], str]:
    """Push ``series`` to a node routing CT to ``kind`` (default options: model
    ``tiny`` under ``tmp_path/models``); return the result objects in Orthanc
    and the ORU."""
    from tests.conftest import open_store
    from tests.export.mllp_ris import running_ris
    from tests.helpers import storescu, wait_for
    from tests.orthanc import Orthanc

    orthanc = Orthanc(tmp_path / "orthanc")
    with running_ris("AA") as ris:
        settings = make_settings(
            assembly={"quiet_seconds": 1.0, "poll_seconds": 0.1},
            runner={
                "enabled": True, "device": "cpu", "threads": 1, "poll_seconds": 0.1,
                "models_dir": str(tmp_path / "models"),
                "pipelines": {kind: options or {"model": "tiny"}},
            },
            routing={"rules": [{
                "name": "ct", "match": {"series": {"Modality": {"equals": "CT"}}},
                "pipeline": kind, "destinations": ["pacs"], "notify": ["ris"],
            }]},
            destinations={
                "pacs": {"type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1",
                         "port": orthanc.dicom_port, "timeout_seconds": 10},
                "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port},
            },
            export={"poll_seconds": 0.2, "backoff_seconds": 1, "max_backoff_seconds": 2},
        )  # fmt: skip
        try:
            orthanc.start()
            start_node(settings)
            assert storescu(series.paths, settings.node.port).returncode == 0
            store = open_store(settings)

            def finished() -> Any:
                runs = [j for j in store.jobs() if j.kind == "run"]
                ok = runs and runs[0].state in (JobState.DONE, JobState.DEAD)
                return runs[0] if ok else None

            run = wait_for(finished, 120, f"the {kind} run to finish", interval=0.3)
            assert run.state == JobState.DONE, run.reason
            wait_for(lambda: ris.received, 30, "the ORU at the RIS", interval=0.2)
            files = fetch_results(orthanc, tmp_path)
        finally:
            orthanc.stop()
    return files, ris.received[0].replace("\n", "\r")


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_a_pushed_ct_gives_a_seg_on_the_right_slices_a_valid_sr_and_an_oru(
    make_settings: Any, start_node: Any, tmp_path: Path, kind: str
) -> None:
    from tests.results.helpers import assert_sr_valid, assert_valid

    series = write_ct_series(tmp_path / "ct", slices=12, rows=32, columns=32)
    with_bright_block(series, range(3, 7))
    write_model(tmp_path / "models", kind, segmentation_card())
    files, oru = run_through_node(make_settings, start_node, tmp_path, series, kind)
    assert sorted(files) == ["SEG", "SR"]
    assert_valid(files["SEG"])
    assert_sr_valid(files["SR"])
    seg = pydicom.dcmread(files["SEG"])
    assert seg.StudyInstanceUID == series.study_uid
    numbers = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    assert sorted(numbers.values()) == ["dense", "liver"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == kind
    weights = tmp_path / "models" / "tiny" / ("model.pt" if kind == "torchscript" else "model.onnx")
    assert _sha(weights) in str(algorithm.AlgorithmParameters)
    volume = load_series(series.paths)
    expected = expected_labels(volume.array)
    index = {s.sop_instance_uid: i for i, s in enumerate(volume.sources)}
    values = {"liver": 1, "dense": 2}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), 32, 32)
    seen: dict[str, set[int]] = {"liver": set(), "dense": set()}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        name = numbers[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        slice_index = index[source]
        assert np.array_equal(frame.astype(bool), expected[slice_index] == values[name])
        seen[name].add(slice_index)
    assert seen["dense"] == set(range(3, 7))
    assert "liver" in oru and "OBR" in oru


def walk(dataset: Any) -> list[Any]:
    """Every content item of an SR, depth first."""
    items = []
    for item in dataset.get("ContentSequence", []):
        items.append(item)
        items.extend(walk(item))
    return items


@pytest.mark.peers
@pytest.mark.slow
def test_a_detection_becomes_a_planar_group_with_scoord3d_and_an_outline_and_an_oru_finding(
    make_settings: Any, start_node: Any, tmp_path: Path
) -> None:
    """The detector boxes the voxels above 500 HU (slices 3-6, rows 8-9,
    columns 6-7); its low-score box is below the card's threshold and is not
    reported."""
    from tests.pipelines.exported_models import Detector, detection_card
    from tests.results.helpers import assert_sr_valid

    series = write_ct_series(tmp_path / "ct", slices=12, rows=32, columns=32)
    with_bright_block(series, range(3, 7))
    write_model(tmp_path / "models", "torchscript", detection_card(), network=Detector())
    files, oru = run_through_node(make_settings, start_node, tmp_path, series, "torchscript")
    assert sorted(files) == ["SR"]
    assert_sr_valid(files["SR"])
    sr = pydicom.dcmread(files["SR"])
    volume = load_series(series.paths)
    hu = volume.array
    found = np.argwhere(hu > 500)
    (s0, r0, c0), (s1, r1, c1) = found.min(0), found.max(0) + 1
    middle = (s0 + s1) // 2
    groups = [
        item for item in walk(sr)
        if item.get("ValueType") == "CONTAINER"
        and item.ConceptNameCodeSequence[0].CodeValue == "125007"
    ]  # fmt: skip
    (group,) = groups
    items = walk(group)
    scoord3d = [i for i in items if i.get("ValueType") == "SCOORD3D"]
    scoord = [i for i in items if i.get("ValueType") == "SCOORD"]
    (region,) = scoord3d
    # the outline, nested under each measurement (where viewers look for it)
    assert len(scoord) == 3 and len({tuple(i.GraphicData) for i in scoord}) == 1
    outline = scoord[0]
    assert region.GraphicType == "POLYLINE" and outline.GraphicType == "POLYLINE"
    assert region.ReferencedFrameOfReferenceUID == volume.frame_of_reference_uid
    # the outline: the box's rows and columns on its central slice's image
    points = np.asarray(outline.GraphicData, dtype=float).reshape(-1, 2)
    assert points.min(0).tolist() == [c0, r0] and points.max(0).tolist() == [c1, r1]
    image = outline.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert image == volume.sources[middle].sop_instance_uid
    # the same rectangle in patient coordinates, in that slice's plane
    source = pydicom.dcmread(series.paths[series.sop_uids.index(image)])
    position = np.asarray(source.ImagePositionPatient, dtype=float)
    rowdir = np.asarray(source.ImageOrientationPatient[:3], dtype=float)
    coldir = np.asarray(source.ImageOrientationPatient[3:], dtype=float)
    dy, dx = (float(v) for v in source.PixelSpacing)
    corners = np.asarray(region.GraphicData, dtype=float).reshape(-1, 3)
    expected = [position + (c - 0.5) * dx * rowdir + (r - 0.5) * dy * coldir
                for c, r in points]  # fmt: skip
    assert np.allclose(corners, expected, atol=1e-3)
    names = {
        str(i.ConceptNameCodeSequence[0].CodeMeaning): i
        for i in items if i.get("ValueType") == "NUM"
    }  # fmt: skip
    score = names["Probability"].MeasuredValueSequence[0].NumericValue
    assert float(score) == pytest.approx(0.9, abs=1e-6)
    assert float(names["Long Axis"].MeasuredValueSequence[0].NumericValue) == pytest.approx(
        max((r1 - r0) * dy, (c1 - c0) * dx), rel=1e-3
    )
    finding = next(
        i for i in items
        if i.get("ValueType") == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"
    )  # fmt: skip
    assert finding.ConceptCodeSequence[0].CodeValue == "27925004"
    segments = oru.split("\r")
    nodule = [s for s in segments if s.startswith("OBX") and "27925004" in s]
    assert len(nodule) == 1 and "|D1|0.9|" in nodule[0] and nodule[0].split("|")[8] == "A"
    box = next(s for s in segments if s.startswith("OBX") and "BOX^Bounding box" in s)
    assert f"central slice {middle + 1} of 12" in box and "|D1|" in box
    assert "S^Stat^HL70485" in oru


@pytest.mark.parametrize(
    ("orientation", "spacing"),
    [("LPS", None), ("RAS", None), ("SAR", None), ("RAS", [6.25, 6.25, 2.5])],
)
def test_a_box_goes_back_to_the_volumes_grid_whatever_the_networks_axes(
    tmp_path: Path, ct: tuple[Series, Volume], orientation: str, spacing: list[float] | None
) -> None:
    from tests.pipelines.exported_models import Detector, detection_card

    _, volume = ct
    card = detection_card()
    card["input"]["orientation"] = orientation
    if spacing is not None:  # twice as many rows and columns: boxes scale back
        card["input"]["spacing"] = spacing
    write_model(tmp_path, "torchscript", card, network=Detector())
    result = loaded("torchscript", tmp_path).run(volume, "cpu")
    found = np.argwhere(volume.array > 500)
    low, high = found.min(0), found.max(0) + 1
    (detection,) = result.detections
    assert detection.box == pytest.approx(
        (*low.tolist(), *high.tolist()), abs=0.51 if spacing else 0
    )
    assert (detection.name, detection.concept.value, detection.threshold) == (
        "nodule",
        "27925004",
        0.5,
    )
    assert f"nodule (score 0.90) at slice {int(detection.centre[0]) + 1}" in result.summary


def test_an_onnx_detector_with_named_outputs_gives_the_same_box(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    from tests.pipelines.exported_models import Detector, detection_card

    _, volume = ct
    write_model(tmp_path, "onnx", detection_card(), network=Detector())
    result = loaded("onnx", tmp_path).run(volume, "cpu")
    found = np.argwhere(volume.array > 500)
    (detection,) = result.detections
    assert detection.box == (*map(float, found.min(0)), *map(float, found.max(0) + 1))
    assert detection.score == pytest.approx(0.9)
