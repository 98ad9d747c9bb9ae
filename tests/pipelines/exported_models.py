"""Tiny exported networks made by the tests, with their cards and manifests.

The segmentation network labels Hounsfield units by thresholds (above 100:
label 1, above 500: label 2), the detector boxes the voxels above 500: their
output is known voxel for voxel, so results can be checked against the
source slices themselves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from numpy.typing import NDArray
from torch import nn

LIVER = {"value": "10200004", "scheme": "SCT", "meaning": "Liver"}
BONE = {"value": "3138006", "scheme": "SCT", "meaning": "Bone tissue"}
TISSUE = {"value": "85756007", "scheme": "SCT", "meaning": "Tissue"}
NODULE = {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"}
MORPHOLOGY = {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Abnormal Structure"}


class Thresholds(nn.Module):
    """Logits whose argmax is 0 below 100 HU, 1 up to 500, 2 above; then a 3x3x3
    convolution holding its centre only (so the output stays exact)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv3d(1, 3, 1)
        self.smooth = nn.Conv3d(3, 3, 3, padding=1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1, 1))
            self.head.bias.copy_(torch.tensor([0.0, -100.0, -600.0]))
            self.smooth.weight.zero_()
            for c in range(3):
                self.smooth.weight[c, c, 1, 1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.smooth(self.head(x))


def expected_labels(hu: NDArray[np.float32]) -> NDArray[np.uint8]:
    """What :class:`Thresholds` makes of ``hu``, voxel for voxel."""
    out = np.zeros(hu.shape, dtype=np.uint8)
    out[hu > 100] = 1
    out[hu > 500] = 2
    return out


class Detector(nn.Module):
    """Boxes the voxels above 500 HU (label 1, score 0.9) and, always, a corner
    voxel with score 0.1 (below the card's threshold, so never reported)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = torch.nonzero(x[0, 0] > 500.0)
        corner = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
        if found.shape[0] == 0:
            boxes = corner
            scores = torch.tensor([0.1])
        else:
            low = found.min(dim=0).values.float()
            high = found.max(dim=0).values.float() + 1.0
            boxes = torch.cat([torch.cat([low, high]).view(1, 6), corner])
            scores = torch.tensor([0.9, 0.1])
        return boxes, scores, torch.ones(boxes.shape[0], dtype=torch.int64)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def segmentation_card(**input_: Any) -> dict[str, Any]:
    return {
        "task": "segmentation",
        "modalities": ["CT"],
        "input": {"orientation": "RAS", "shape": [16, 16, 8], **input_},
        "output": {
            "activation": "softmax",
            "labels": {
                1: {"name": "liver", "type": LIVER},
                2: {"name": "dense", "type": BONE, "category": TISSUE},
            },
        },
    }


def detection_card() -> dict[str, Any]:
    return {
        "task": "detection",
        "modalities": ["CT"],
        "input": {"orientation": "LPS", "shape": [16, 16, 8]},
        "output": {
            "activation": "none",
            "labels": {1: {"name": "nodule", "type": NODULE, "category": MORPHOLOGY}},
            "thresholds": {"nodule": 0.5},
        },
    }


def write_model(
    models_dir: Path,
    kind: str,
    card: dict[str, Any],
    *,
    name: str = "tiny",
    network: nn.Module | None = None,
) -> Path:
    """``<models_dir>/<name>/model.pt|onnx`` + ``card.yaml`` and ``<name>.yaml``."""
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    network = (network or Thresholds()).eval()
    example = torch.full((1, 1, 16, 16, 8), 300.0)
    if kind == "torchscript":
        weights = folder / "model.pt"
        if isinstance(network, Detector):
            torch.jit.script(network).save(str(weights))
        else:
            torch.jit.trace(network, example).save(str(weights))
    elif isinstance(network, Detector):
        # exported by tracing: the graph holds the branch that finds a box
        weights = folder / "model.onnx"
        example[0, 0, 4:8, 4:8, 2:5] = 600.0
        torch.onnx.export(
            network,
            (example,),
            str(weights),
            dynamo=False,
            input_names=["image"],
            output_names=["boxes", "scores", "labels"],
            dynamic_axes={"image": {2: "x", 3: "y", 4: "z"}},
        )
    else:
        weights = folder / "model.onnx"
        torch.onnx.export(
            network,
            (example,),
            str(weights),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "n", 2: "x", 3: "y", 4: "z"}},
        )
    card_path = folder / "card.yaml"
    card_path.write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")
    manifest = models_dir / f"{name}.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "version": "0.1.0",
                "file": weights.relative_to(models_dir).as_posix(),
                "sha256": sha256(weights),
                "files": [
                    {
                        "file": card_path.relative_to(models_dir).as_posix(),
                        "sha256": sha256(card_path),
                    }
                ],
                "intended_use": "Tests only.",
            },
            sort_keys=False,
        ),
        encoding="utf-8",
    )
    return manifest
