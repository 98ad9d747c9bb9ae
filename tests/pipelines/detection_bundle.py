"""A tiny MONAI detection bundle (RetinaNet), written by the tests.

MONAI Model Zoo's lung_nodule_ct_detection builds its RetinaNet on
``resnet_fpn_feature_extractor``, which needs torchvision; the tests build it
on :class:`TinyFeatures` instead (``RetinaNet`` takes any module with an
``out_channels`` attribute returning an ordered dict of feature maps). The
config is otherwise laid out as the model zoo's: ``network_def``,
``anchor_generator``, ``detector``, ``detector_ops``, ``preprocessing``.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

__all__ = ["TinyFeatures", "build_network", "write_detection_bundle"]


class TinyFeatures(nn.Module):
    """Two feature maps, at 1/2 and 1/4 of the input's size, ``out_channels`` each."""

    def __init__(self, in_channels: int = 1, out_channels: int = 8) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.down1 = nn.Conv3d(in_channels, out_channels, 3, stride=2, padding=1)
        self.down2 = nn.Conv3d(out_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, image: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        first = torch.relu(self.down1(image))
        return OrderedDict([("0", first), ("1", torch.relu(self.down2(first)))])


PIXDIM = (6.25, 6.25, 2.5)
"""The bundle's ``Spacingd``: half the synthetic CT's 12.5 mm pixels, its 2.5 mm slices."""
A_MIN, A_MAX = -1024.0, 300.0
"""The bundle's ``ScaleIntensityRanged`` (to 0..1, clipped), as the model zoo's."""

NETWORK_DEF: dict[str, Any] = {
    "_target_": "RetinaNet",
    "spatial_dims": 3,
    "num_classes": 2,
    "num_anchors": 2,
    "feature_extractor": "@feature_extractor",
    "size_divisible": [4, 4, 4],
}
ANCHORS: dict[str, Any] = {
    "_target_": "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape",
    "feature_map_scales": [1, 2],
    "base_anchor_shapes": [[6, 6, 4], [10, 10, 6]],
}


def build_network(seed: int = 0) -> nn.Module:
    """The bundle's RetinaNet with set weights (its classification bias at 0, so
    the scores spread around 0.5 rather than the training prior's 0.01)."""
    from monai.apps.detection.networks.retinanet_network import RetinaNet

    torch.manual_seed(seed)
    options = {k: v for k, v in NETWORK_DEF.items() if k not in ("_target_", "feature_extractor")}
    network = RetinaNet(feature_extractor=TinyFeatures(), **options)
    with torch.no_grad():
        network.classification_head.cls_logits.bias.zero_()
    return network


def write_detection_bundle(
    root: Path,
    *,
    score_thresh: float = 0.0,
    detections: int = 3,
    channel_def: dict[str, str] | None = None,
    pixdim: tuple[float, float, float] = PIXDIM,
    seed: int = 0,
) -> Path:
    """A detection bundle at ``root``, its weights' SHA-256 in ``large_files.yml``."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    pred: dict[str, Any] = {"type": "object", "format": "dict", "num_channels": 2}
    if channel_def is not None:
        pred["channel_def"] = channel_def
    meta = {
        "version": "0.1.0",
        "name": "Tiny nodule detection",
        "task": "CT lung nodule detection",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": ["16*n", "16*n", "8*n"]}},
            "outputs": {"pred": pred},
        },
    }  # fmt: skip
    (root / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    selector = (
        f"$@detector.set_box_selector_parameters(score_thresh={score_thresh},"
        f"topk_candidates_per_level=100,nms_thresh=0.22,detections_per_img={detections})"
    )
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "infer_patch_size": [32, 32, 16],
        "anchor_generator": ANCHORS,
        "feature_extractor": {"_target_": "tests.pipelines.detection_bundle.TinyFeatures"},
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "detector": {"_target_": "RetinaNetDetector", "network": "@network",
                     "anchor_generator": "@anchor_generator", "debug": False},
        "detector_ops": [
            "$@detector.set_target_keys(box_key='box', label_key='label')",
            selector,
            "$@detector.set_sliding_window_inferer(roi_size=@infer_patch_size,overlap=0.25,"
            "sw_batch_size=1,mode='constant',device='cpu')",
        ],
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "meta_key_postfix": "meta_dict"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim)},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": A_MIN,
             "a_max": A_MAX, "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "inferer": {"_target_": "scripts.detection_inferer.RetinaNetInferer",
                    "detector": "@detector"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "ClipBoxToImaged", "box_keys": "box", "label_keys": "label",
             "box_ref_image_keys": "image", "remove_empty": True},
            {"_target_": "AffineBoxToWorldCoordinated", "box_keys": "box",
             "box_ref_image_keys": "image", "image_meta_key_postfix": "meta_dict",
             "affine_lps_to_ras": True},
            {"_target_": "ConvertBoxModed", "box_keys": "box", "src_mode": "xyzxyz",
             "dst_mode": "cccwhd"},
            {"_target_": "DeleteItemsd", "keys": ["image"]},
        ]},
    }  # fmt: skip
    (root / "configs" / "inference.json").write_text(json.dumps(inference), encoding="utf-8")
    weights = root / "models" / "model.pt"
    torch.save(build_network(seed).state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    listing = {"large_files": [{"path": "models/model.pt", "hash_type": "sha256",
                                "hash_val": digest}]}  # fmt: skip
    (root / "large_files.yml").write_text(yaml.safe_dump(listing), encoding="utf-8")
    return root
