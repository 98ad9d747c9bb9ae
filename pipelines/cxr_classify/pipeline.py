"""The ``cxr-classify`` pipeline: findings of a frontal chest radiograph, with Grad-CAM.

Weights, labels (with their SNOMED CT codes), per-finding thresholds and the
input contract come from the model manifest ``cxr-classify`` (see
``models/train_cxr.py`` for how to make one). The network is a MONAI DenseNet
with one sigmoid output per label (multi-label).

For every label the result has a :class:`~dicomnode.protocol.Finding` with its
probability and the manifest's threshold. For every positive finding it has a
Grad-CAM :class:`~dicomnode.protocol.Heatmap` in the source image's grid, and
the summary says where that heat is centred: in which third of the image
(upper, middle, lower) and which side, in image terms, with the patient side
added when Patient Orientation gives it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from dicomnode.protocol import (
    ARTIFICIAL_INTELLIGENCE_CODE,
    Algorithm,
    Code,
    Finding,
    Heatmap,
    InputRefused,
    InputSpec,
    ModelFile,
    PipelineResult,
    Volume,
)

from .gradcam import forward_with_activations, grad_cam
from .network import TARGET_LAYER, ModelInput, build_network
from .preprocess import check_view, preprocess

__all__ = ["MODEL_NAME", "CXRClassifyPipeline", "check_input", "describe_region"]

LOGGER = logging.getLogger(__name__)

MODEL_NAME = "cxr-classify"
"""The manifest this pipeline loads."""

_MIN_IMAGE_SIZE = 32
_CORE_HEAT = 0.5  # the region described is the heat-weighted centre of heat >= this


class CXRClassifyPipeline:
    """Classify a frontal chest radiograph (CR or DX) with the manifest's labels.

    Parameters
    ----------
    explain : bool
        Compute a Grad-CAM heatmap for each positive finding (default). Off,
        the network runs in inference mode without gradients.
    """

    name: str = "cxr-classify"
    version: str = "1.0.0"
    #: one frontal chest radiograph; a header that names another body part is refused
    input: InputSpec = InputSpec(
        modalities=frozenset({"CR", "DX"}),
        min_slices=1,
        max_slices=1,
        body_parts=frozenset({"CHEST", "THORAX", "TORAX", "LUNG"}),
    )
    algorithm: Algorithm = Algorithm(family=ARTIFICIAL_INTELLIGENCE_CODE, trained_model=True)
    required_models: tuple[str, ...] = (MODEL_NAME,)

    def __init__(self, explain: bool = True) -> None:
        self.explain = explain
        self._network: nn.Module | None = None
        self._model: ModelFile | None = None
        self._spec = ModelInput()
        self._labels: tuple[tuple[str, Code, float], ...] = ()
        self._device = torch.device("cpu")

    def check_setup(self, models: Mapping[str, ModelFile]) -> None:
        """Check the verified model's manifest without loading its weights.

        Called by ``dicomnode config check`` and before ``serve`` starts.

        Raises
        ------
        ValueError
            As :meth:`load` does for the manifest: the model is not given, it
            lists no labels, indices are not 0..n-1, a label has no
            threshold, or its input contract is unusable.
        """
        self._manifest(models)

    def _manifest(
        self, models: Mapping[str, ModelFile] | None
    ) -> tuple[ModelFile, list[tuple[int, str, Code]], ModelInput]:
        """The model, its labels in index order and its input contract, checked."""
        if not models or MODEL_NAME not in models:
            raise ValueError(
                f"{self.name} needs the model {MODEL_NAME!r} (its manifest and weights)"
            )
        model = models[MODEL_NAME]
        where = f"model {model.name!r} {model.version}"
        labels = sorted(model.labels, key=lambda item: item[0])
        if not labels:
            raise ValueError(f"{where}: the manifest lists no labels")
        if [index for index, _, _ in labels] != list(range(len(labels))):
            raise ValueError(
                f"{where}: label indices must be 0..{len(labels) - 1}, "
                f"got {[index for index, _, _ in labels]}"
            )
        missing = [name for _, name, _ in labels if name not in model.thresholds]
        if missing:
            raise ValueError(f"{where}: no threshold for label(s) {', '.join(missing)}")
        raw_input = model.extra.get("input", {})
        if not isinstance(raw_input, Mapping):
            raise ValueError(f"{where}: the manifest's input is not a mapping")
        try:
            spec = ModelInput.from_manifest(raw_input)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        return model, labels, spec

    def load(self, device: str, models: Mapping[str, ModelFile] | None = None) -> None:
        """Build the network on ``device`` and load the verified weights.

        Raises
        ------
        ValueError
            If the model is not given, its manifest's labels or input contract
            are unusable (no labels, indices not 0..n-1, a label without a
            threshold, an unknown network), or the weights do not fit the
            network the manifest names.
        """
        model, labels, spec = self._manifest(models)
        where = f"model {model.name!r} {model.version}"
        network = build_network(spec, len(labels))
        state = torch.load(model.path, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(
                f"{where}: weights {model.path.name} do not fit a {spec.network} with "
                f"{len(labels)} output(s) and {spec.in_channels} input channel(s): {exc}"
            ) from exc
        network.eval().requires_grad_(False)
        self._device = torch.device(device)
        self._network = network.to(self._device)
        self._model = model
        self._spec = spec
        self._labels = tuple((name, code, model.thresholds[name]) for _, name, code in labels)
        LOGGER.info(
            "loaded %s %s (%s, %d labels, input %dx%d) on %s",
            model.name,
            model.version,
            spec.network,
            len(labels),
            *spec.size,
            device,
        )

    def run(self, volume: Volume, device: str) -> PipelineResult:
        """Classify the radiograph in ``volume``; explain the positive findings.

        Raises
        ------
        InputRefused
            If the volume is not a frontal CR/DX radiograph (:func:`check_input`).
        RuntimeError
            If :meth:`load` was not called.
        """
        if self._network is None or self._model is None:
            raise RuntimeError(f"{self.name}: load() must be called before run()")
        check_input(volume)
        target = torch.device(device)
        if target != self._device:
            self._network = self._network.to(target)
            self._device = target
        grid, placement = preprocess(volume, self._spec.size)
        batch = grid[None].to(target)
        if self._spec.in_channels == 3:
            batch = batch.repeat(1, 3, 1, 1)
        maps: dict[int, torch.Tensor] = {}
        if self.explain:
            with torch.enable_grad():
                batch.requires_grad_(True)
                logits, activations = forward_with_activations(self._network, TARGET_LAYER, batch)
                probabilities = torch.sigmoid(logits[0].detach()).cpu().tolist()
                positive = [i for i, (_, _, t) in enumerate(self._labels) if probabilities[i] >= t]
                for number, index in enumerate(positive):
                    cam = grad_cam(
                        logits,
                        activations,
                        index,
                        self._spec.size,
                        retain_graph=number < len(positive) - 1,
                    )
                    maps[index] = placement.to_source(cam.cpu())
        else:
            with torch.inference_mode():
                probabilities = torch.sigmoid(self._network(batch)[0]).cpu().tolist()

        findings: list[Finding] = []
        heatmaps: list[Heatmap] = []
        regions: dict[int, str] = {}
        for index, (_, code, threshold) in enumerate(self._labels):
            probability = min(1.0, max(0.0, float(probabilities[index])))
            findings.append(Finding(code, probability, threshold))
            if index in maps:
                heat = maps[index].clamp(0.0, 1.0).numpy().astype(np.float32)
                peak = float(heat.max())
                if peak > 0:
                    heat = heat / peak
                heatmaps.append(Heatmap(code, heat[None]))
                regions[index] = describe_region(heat, volume.attributes)
        return PipelineResult(
            findings=tuple(findings),
            heatmaps=tuple(heatmaps),
            models=(self._model.info,),
            summary=self._summary(findings, regions),
        )

    def _summary(self, findings: list[Finding], regions: Mapping[int, str]) -> str:
        positive: list[str] = []
        negative: list[str] = []
        for index, finding in enumerate(findings):
            name = self._labels[index][0]
            threshold = finding.threshold if finding.threshold is not None else 0.0
            if finding.positive:
                text = f"{name} {finding.probability:.2f} (over {threshold:.2f})"
                if index in regions:
                    text += f", {regions[index]}"
                positive.append(text)
            else:
                negative.append(f"{name} {finding.probability:.2f} (under {threshold:.2f})")
        parts = []
        if positive:
            parts.append("Positive: " + "; ".join(positive) + ".")
        else:
            parts.append("No finding over its threshold.")
        if negative:
            parts.append("Negative: " + "; ".join(negative) + ".")
        return " ".join(parts)


def check_input(volume: Volume) -> None:
    """Refuse a volume ``cxr-classify`` was not made for.

    Raises
    ------
    InputRefused
        If the modality is not CR or DX, the volume is not one image, the
        image is smaller than 32x32, or it is not a frontal view
        (:func:`.preprocess.check_view`).
    """
    if volume.modality.upper() not in ("CR", "DX"):
        raise InputRefused(f"cxr-classify needs a CR or DX radiograph, got {volume.modality!r}")
    if volume.array.shape[0] != 1:
        raise InputRefused(
            f"cxr-classify takes one projection image, got {volume.array.shape[0]} slices"
        )
    rows, columns = volume.array.shape[1:]
    if min(rows, columns) < _MIN_IMAGE_SIZE:
        raise InputRefused(
            f"cxr-classify needs images of at least {_MIN_IMAGE_SIZE}x{_MIN_IMAGE_SIZE} pixels, "
            f"got {rows}x{columns}"
        )
    check_view(volume.attributes)


def describe_region(heat: np.ndarray, attributes: Mapping[str, str]) -> str:
    """Where the core of a heatmap (heat >= 0.5) is centred, in words.

    The image is cut in thirds each way: rows give the upper, middle or lower
    zone, columns the left, central or right part *of the image as
    displayed*. When Patient Orientation says which way the rows run (``L``
    or ``R`` first), the patient's side is added.
    """
    core = np.where(heat >= _CORE_HEAT, heat, 0.0)
    total = float(core.sum())
    if total <= 0.0:
        return "no localised heat"
    rows, columns = np.indices(heat.shape, dtype=np.float64)
    row = float((rows * core).sum() / total) / max(1, heat.shape[0] - 1)
    column = float((columns * core).sum() / total) / max(1, heat.shape[1] - 1)
    zone = ("upper", "middle", "lower")[min(2, int(row * 3))]
    side = ("left", "central", "right")[min(2, int(column * 3))]
    if side == "central":
        where = "the central zone" if zone == "middle" else f"the {zone} central zone"
        return f"heat centred in {where} of the image"
    text = f"heat centred in the {zone} {side} zone of the image"
    row_direction = attributes.get("PatientOrientation", "").upper().split("\\")[0][:1]
    if row_direction in ("L", "R"):
        # The row direction points along increasing column index (to the image's right).
        right_is = "left" if row_direction == "L" else "right"
        left_is = "right" if right_is == "left" else "left"
        text += f" (patient's {right_is if side == 'right' else left_is})"
    return text
