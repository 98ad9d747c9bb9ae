"""A MONAI bundle's own postprocessing: multi-label outputs (a brain tumour's
nested regions), connected components, transforms with nothing to do here.

The bundle's network is a 1x1x1 convolution with set weights, so what each
channel marks is known: after ``ScaleIntensityRanged`` of [-1000, 1000] HU
to [0, 1], channel 0 ("TC") is above 200 HU, 1 ("WT") above -100, 2 ("ET")
above 500.
"""

from __future__ import annotations

import json
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
