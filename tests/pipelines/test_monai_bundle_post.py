"""A MONAI bundle's own postprocessing: multi-label outputs (a brain tumour's
nested regions), connected components, transforms with nothing to do here.

The bundle's network is a 1x1x1 convolution with set weights, so what each
channel marks is known: after ``ScaleIntensityRanged`` of [-1000, 1000] HU
to [0, 1], channel 0 ("TC") is above 200 HU, 1 ("WT") above -100, 2 ("ET")
above 500.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch

from dicomnode.protocol import Volume
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import Series, write_ct_series
from pipelines.monai_bundle import MonaiBundlePipeline
from tests.pipelines.test_nnunet import with_bright_block

# channel: threshold in the scaled intensity (HU = 2000 x - 1000)
THRESHOLDS = {0: 0.6, 1: 0.45, 2: 0.75}


def write_bundle(root: Path, postprocessing: list[dict[str, Any]]) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    meta = {
        "name": "Tiny tumour regions",
        "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "modality": "CT", "num_channels": 1}},
            "outputs": {"pred": {"type": "image", "num_channels": 3,
                                 "channel_def": {"0": "TC", "1": "WT", "2": "ET"}}},
        },
    }  # fmt: skip
    (root / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    inference = {
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 3,
                        "kernel_size": 1},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000,
             "a_max": 1000, "b_min": 0.0, "b_max": 1.0, "clip": True},
        ]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
    }  # fmt: skip
    (root / "configs" / "inference.json").write_text(json.dumps(inference), encoding="utf-8")
    network = torch.nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        network.weight.copy_(torch.full((3, 1, 1, 1, 1), 100.0))
        network.bias.copy_(torch.tensor([-100.0 * THRESHOLDS[c] for c in range(3)]))
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Series, Volume]:
    series = write_ct_series(tmp_path_factory.mktemp("ct"), slices=10, rows=32, columns=32)
    with_bright_block(series, range(3, 7))
    # a stray bright voxel far from the block, on slice 8
    ds = pydicom.dcmread(series.paths[8])
    pixels = ds.pixel_array.copy()
    pixels[28, 28] = int(600 - float(ds.RescaleIntercept))
    ds.PixelData = pixels.tobytes()
    ds.save_as(series.paths[8], enforce_file_format=True)
    return series, load_series(series.paths)


SIGMOID = [
    {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
    {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
    {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
    {"_target_": "SaveImaged", "keys": "pred", "output_dir": "/nonexistent"},
]


def run(root: Path, volume: Volume) -> Any:
    pipeline = MonaiBundlePipeline()
    pipeline.configure({"bundle": str(root)})
    pipeline.load("cpu")
    return pipeline, pipeline.run(volume, "cpu")


def test_sigmoid_channels_are_labels_of_their_own_the_smallest_winning(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    _, volume = ct
    pipeline, result = run(write_bundle(tmp_path / "b", SIGMOID), volume)
    assert pipeline.bundle.post_ignored == ()  # Invertd and SaveImaged have nothing to do
    hu = volume.array
    expected = np.zeros(hu.shape, dtype=np.uint8)
    expected[hu > -100] = 2  # WT
    expected[hu > 200] = 1  # TC, inside WT
    expected[hu > 500] = 3  # ET, inside TC
    assert result.label_map is not None
    assert np.array_equal(result.label_map, expected)
    assert [(s.label, s.name) for s in result.segments] == [(1, "TC"), (2, "WT"), (3, "ET")]
    assert (expected == 2).any() and (expected == 1).any()
    assert result.label_map[8, 28, 28] == 3, "the stray voxel is ET too"


def test_the_bundles_connected_component_step_runs(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    _, volume = ct
    largest = {"_target_": "KeepLargestConnectedComponentd", "keys": "pred",
               "applied_labels": [2], "is_onehot": True}  # fmt: skip
    _, result = run(write_bundle(tmp_path / "b", [*SIGMOID[:3], largest]), volume)
    assert result.label_map is not None
    # the stray voxel is not in ET's largest component: it stays TC
    assert result.label_map[8, 28, 28] == 1
    assert (result.label_map == 3).sum() == (volume.array[:8] > 500).sum()


def test_softmax_then_argmax_and_one_hot_give_the_same_labels(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    _, volume = ct
    argmax = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
              {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]  # fmt: skip
    one_hot = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
               {"_target_": "AsDiscreted", "keys": "pred", "argmax": True,
                "to_onehot": 3}]  # fmt: skip
    _, first = run(write_bundle(tmp_path / "a", argmax), volume)
    _, second = run(write_bundle(tmp_path / "b", one_hot), volume)
    assert first.label_map is not None and second.label_map is not None
    assert np.array_equal(first.label_map, second.label_map)
    # softmax over (TC, WT, ET) logits, channel 0 counts as background
    assert set(np.unique(first.label_map).tolist()) <= {0, 1, 2}


def write_classifier(root: Path, postprocessing: list[dict[str, Any]]) -> Path:
    """A classification bundle: Resized to 16 x 16 x 8, MONAI's Classifier, two classes."""
    from monai.networks.nets import Classifier

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    meta = {
        "name": "Tiny dense-or-not",
        "version": "0.2.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": [16, 16, 8]}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes",
                                 "num_channels": 2,
                                 "channel_def": {"0": "no dense focus", "1": "dense focus"}}},
        },
    }  # fmt: skip
    (root / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    network_def = {"_target_": "Classifier", "in_shape": [1, 16, 16, 8], "classes": 2,
                   "channels": [4], "strides": [2]}  # fmt: skip
    inference = {
        "network_def": network_def,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000,
             "a_max": 1000, "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "Resized", "keys": "image", "spatial_size": [16, 16, 8]},
        ]},
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
    }  # fmt: skip
    (root / "configs" / "inference.json").write_text(json.dumps(inference), encoding="utf-8")
    torch.manual_seed(1)
    network = Classifier(in_shape=(1, 16, 16, 8), classes=2, channels=(4,), strides=(2,))
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


def test_a_classification_bundle_gives_one_finding_per_class(
    tmp_path: Path, ct: tuple[Series, Volume]
) -> None:
    """Probabilities as MONAI's own transforms would make them: the volume in RAS,
    scaled, MONAI's Resize (area), the network, the bundle's softmax."""
    from monai.networks.nets import Classifier
    from monai.transforms import Resize

    from dicomnode.results.common import sources_in_volume_order
    from dicomnode.results.sr import build_report
    from pipelines.monai_bundle.orientation import Reorientation
    from tests.results.helpers import assert_sr_valid, context, save

    series, volume = ct
    softmax = [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]
    root = write_classifier(tmp_path / "c", softmax)
    pipeline, result = run(root, volume)
    ras = Reorientation.of(volume, "RAS").forward(volume.array)
    scaled = np.clip((ras + 1000.0) / 2000.0, 0.0, 1.0).astype(np.float32)
    resized = torch.as_tensor(Resize((16, 16, 8))(scaled[None]))
    network = Classifier(in_shape=(1, 16, 16, 8), classes=2, channels=(4,), strides=(2,))
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    with torch.inference_mode():
        expected = network.eval()(resized[None].float())[0].softmax(0)
    assert result.label_map is None and not result.segments
    none, dense = result.findings
    assert (none.concept.meaning, dense.concept.meaning) == ("no dense focus", "dense focus")
    assert (dense.concept.value, dense.concept.scheme) == ("MONAI1-DENSEFOCU", "99DICOMNODE")
    assert [none.probability, dense.probability] == pytest.approx(expected.tolist(), abs=1e-5)
    assert "dense focus" in result.summary
    report = pipeline.self_test()
    assert report.output == "input (1, 1, 16, 16, 8) -> (1, 2)"
    assert report.input_contract.startswith("classification, modalities CT")
    # the findings make a valid SR (local codes identified)
    sources = sources_in_volume_order(volume, [pydicom.dcmread(p) for p in series.paths])
    ctx = context(series.paths, tmp_path / "out", "monai-bundle", "1.0.0")
    sr = build_report(result, volume, sources, ctx, None)
    assert sr is not None
    assert_sr_valid(save(sr, tmp_path / "out" / "sr.dcm"))
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99DICOMNODE"


def test_a_bundle_whose_network_gives_fewer_channels_than_declared_stops_config_check(
    tmp_path: Path,
) -> None:
    from dicomnode.runner.requirements import pipeline_setup_problems

    root = write_bundle(tmp_path / "b", SIGMOID)
    assert pipeline_setup_problems(MonaiBundlePipeline(), {"bundle": str(root)}, tmp_path) == []
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 4
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    (problem,) = pipeline_setup_problems(MonaiBundlePipeline(), {"bundle": str(root)}, tmp_path)
    assert "network gives (1, 3, 32, 32, 32) for (1, 1, 32, 32, 32)" in problem
    assert "its metadata declares 4 channel(s)" in problem


@pytest.mark.peers
@pytest.mark.slow
def test_a_pushed_ct_gives_a_seg_of_the_bundles_own_labels_a_valid_sr_and_an_oru(
    make_settings: Any, start_node: Any, tmp_path: Path
) -> None:
    from tests.pipelines.test_exported import run_through_node
    from tests.results.helpers import assert_sr_valid, assert_valid

    series = write_ct_series(tmp_path / "ct", slices=10, rows=32, columns=32)
    with_bright_block(series, range(3, 7))
    root = write_bundle(tmp_path / "bundle", SIGMOID)
    files, oru = run_through_node(
        make_settings, start_node, tmp_path, series, "monai-bundle", {"bundle": str(root)}
    )
    assert sorted(files) == ["SEG", "SR"]
    assert_valid(files["SEG"])
    assert_sr_valid(files["SR"])
    seg = pydicom.dcmread(files["SEG"])
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["TC", "WT", "ET"]
    volume = load_series(series.paths)
    hu = volume.array
    expected = {"TC": (hu > 200) & (hu <= 500), "WT": (hu > -100) & (hu <= 200), "ET": hu > 500}
    numbers = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    index = {s.sop_instance_uid: i for i, s in enumerate(volume.sources)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), 32, 32)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        name = numbers[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        assert np.array_equal(frame.astype(bool), expected[name][index[source]]), name
    assert re.search(r"TC [0-9.]+ mL; WT [0-9.]+ mL; ET [0-9.]+ mL", oru), oru
