"""The ``torchscript`` and ``onnx`` pipelines: an exported network driven by its model card.

The node YAML names the model manifest::

    runner:
      pipelines:
        torchscript:
          model: liver-seg          # <runner.models_dir>/liver-seg.yaml

The manifest's ``file`` is the network (``model.pt`` for TorchScript,
``model.onnx`` for ONNX) and its ``files`` list the card (``card.yaml``,
:mod:`.card`) beside it, each with its SHA-256: the runner verifies both
before the pipeline reads either.

How a volume is run
-------------------
1. The volume's array ``(slices, rows, columns)`` is turned to the card's
   ``input.orientation`` (a transposition and flips, exact and invertible),
   resampled to ``input.spacing`` and normalised as ``input.normalisation``
   says; it becomes ``(1, C, X, Y, Z)`` (the one series repeated over ``C``).
2. The network runs on the whole volume, or through MONAI's
   ``sliding_window_inference`` with the card's ``input.sliding_window``.
3. By task:

   * **segmentation**: logits back on the unresampled grid (trilinear), then
     ``softmax``: the argmax; ``sigmoid``: channel ``c`` is label ``c + 1``
     where its probability reaches the label's threshold (0.5 by default), the
     most probable winning; ``none``: the network's own postprocessing gives
     the label map (one channel of label values, nearest-neighbour back).
     The map goes back to the volume's grid voxel for voxel; one segment and
     a volume (mL) per label present.
   * **classification**: the volume is resized to ``input.shape``; the
     network gives ``(1, K)``; each card label (a class index) becomes a
     finding with its probability and threshold.
   * **detection**: the network gives ``boxes`` ``(M, 6)`` (``x0, y0, z0,
     x1, y1, z1`` in voxels of its input, voxel ``i`` spanning ``[i, i+1)``),
     ``scores`` ``(M,)`` and ``labels`` ``(M,)`` (by name, or in that order);
     each box whose score reaches its label's threshold becomes a detection,
     its box mapped back to the volume's grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers.utils import sliding_window_inference
from numpy.typing import NDArray

from dicomnode.protocol import (
    ARTIFICIAL_INTELLIGENCE_CODE,
    Algorithm,
    Code,
    Detection,
    Finding,
    InputRefused,
    InputSpec,
    Measurement,
    ModelFile,
    ModelReport,
    PipelineResult,
    Segment,
    Volume,
)
from pipelines.monai_bundle.bundle import NormalizeIntensity, Resample, ScaleIntensityRange, Step
from pipelines.monai_bundle.orientation import INDEX_ORDER, Reorientation, box_in_volume

from .card import CARD_NAME, ModelCard, read_card
from .runtime import OnnxRuntime, Output, Runtime, TorchScriptRuntime

__all__ = ["MILLILITER", "VOLUME", "ExportedPipeline", "OnnxPipeline", "TorchScriptPipeline"]

LOGGER = logging.getLogger(__name__)

VOLUME = Code("118565006", "SCT", "Volume")
MILLILITER = Code("mL", "UCUM", "milliliter")

_VOLUMETRIC = frozenset({"CT", "MR", "PT", "NM", "US", "CR", "DX"})


class ExportedPipeline:
    """An exported network and its card; :class:`TorchScriptPipeline` and
    :class:`OnnxPipeline` differ only in the runtime and the file they take."""

    name: str = "exported"
    version: str = "1.0.0"
    suffixes: tuple[str, ...] = ()
    input: InputSpec = InputSpec(modalities=_VOLUMETRIC, min_slices=1)
    algorithm: Algorithm = Algorithm(family=ARTIFICIAL_INTELLIGENCE_CODE, trained_model=True)

    def __init__(self) -> None:
        self.required_models: tuple[str, ...] = ()
        self._runtime: Runtime | None = None
        self._card: ModelCard | None = None
        self._model: ModelFile | None = None

    @property
    def setting(self) -> str:
        """Where the node YAML names the model."""
        return f"runner.pipelines.{self.name}.model"

    def open(self, path: Path, device: str) -> Runtime:
        """Load the network file on ``device``."""
        raise NotImplementedError

    def configure(self, options: Mapping[str, object]) -> None:
        """Take ``runner.pipelines.<name>``'s options: ``model`` (a manifest name).

        Raises
        ------
        InputRefused
            An option this pipeline does not know.
        """
        unknown = sorted(set(options) - {"model"})
        if unknown:
            raise InputRefused(f"{self.name} has no option {', '.join(unknown)}")
        if options.get("model") is not None:
            self.required_models = (str(options["model"]),)

    def _verified(self, models: Mapping[str, ModelFile]) -> tuple[ModelFile, ModelCard]:
        if not self.required_models:
            raise InputRefused(f"{self.name} has no model: set {self.setting} in the node's YAML")
        model = models[self.required_models[0]]
        if model.path.suffix.lower() not in self.suffixes:
            raise InputRefused(
                f"{self.name}: model {model.name!r}: {model.path.name} is not a "
                f"{' or '.join(self.suffixes)} file"
            )
        verified = frozenset({model.path.resolve(), *(p.resolve() for p in model.files)})
        card = read_card(model.path.parent / CARD_NAME, verified)
        return model, card

    def check_setup(self, models: Mapping[str, ModelFile]) -> None:
        """Read the card, load the network on the CPU and run it once on a
        synthetic input of the card's shape (:meth:`self_test`), then let go.

        Raises
        ------
        InputRefused
            No model configured, a card that is missing, unverified or not
            valid (naming the field), or a network whose output does not fit
            its card.
        """
        probe = type(self)()
        probe.required_models = self.required_models
        probe.load("cpu", models)
        report = probe.self_test()
        LOGGER.info(
            "%s: %s %s loads and runs (%s)", self.name, report.name, report.version, report.output
        )

    def load(self, device: str, models: Mapping[str, ModelFile] | None = None) -> None:
        """Read the verified card and load the verified network on ``device``.

        Raises
        ------
        InputRefused
            As :meth:`check_setup`.
        """
        model, card = self._verified(models or {})
        self._runtime = self.open(model.path, device)
        self._card, self._model = card, model
        self.input = InputSpec(modalities=frozenset(card.modalities), min_slices=1)
        LOGGER.info(
            "%s: %s %s (%s) on %s, %d parameters",
            self.name,
            model.name,
            model.version,
            card.task,
            self._runtime.provider,
            self._runtime.parameters,
        )

    def _loaded(self) -> tuple[Runtime, ModelCard, ModelFile]:
        if self._runtime is None or self._card is None or self._model is None:
            raise RuntimeError(f"{self.name}: load() was not called")
        return self._runtime, self._card, self._model

    # -- models check -----------------------------------------------------------------

    def self_test(self) -> ModelReport:
        """Run the network once on a synthetic input of the card's shape.

        Raises
        ------
        InputRefused
            The output does not fit the card (channels, classes, detector outputs).
        """
        runtime, card, model = self._loaded()
        shape = card.input.check_shape
        generator = torch.Generator().manual_seed(0)
        batch = torch.randn((1, card.input.channels, *shape), generator=generator)
        started = time.perf_counter()
        try:
            output = self._infer(batch)
        except RuntimeError as exc:
            raise InputRefused(
                f"{self.name}: model {model.name!r} fails on an input {tuple(batch.shape)} "
                f"(the card's input.channels and shape): {exc}"
            ) from exc
        seconds = time.perf_counter() - started
        described = self._check_output(output, shape)
        return ModelReport(
            name=model.name,
            version=model.version,
            sha256=model.sha256,
            parameters=runtime.parameters,
            device=runtime.provider,
            input_contract=self.contract(),
            labels=tuple(
                f"{value}: {label.name} ({label.type.scheme} {label.type.value} "
                f"{label.type.meaning})"
                for value, label in sorted(card.output.labels.items())
            ),
            output=f"input {tuple(batch.shape)} -> {described}",
            seconds=seconds,
        )

    def contract(self) -> str:
        """The card's input contract, one line."""
        _, card, _ = self._loaded()
        given = card.input
        norm = given.normalisation
        normalisation = (
            f"range [{norm.a_min:g}, {norm.a_max:g}] -> [{norm.b_min:g}, {norm.b_max:g}]"
            + (" clipped" if norm.clip else "")
            if norm.kind == "range"
            else "z-score" + (" (non-zero)" if norm.nonzero else "")
            if norm.kind == "zscore"
            else "none"
        )
        parts = [
            card.task,
            "modalities " + "/".join(card.modalities),
            f"orientation {given.orientation}",
            "spacing "
            + (
                "as acquired"
                if given.spacing is None
                else "x".join(f"{s:g}" for s in given.spacing)
            )
            + " mm",
            f"{given.channels} channel(s)",
            f"normalisation {normalisation}",
        ]
        if given.sliding_window is not None:
            window = given.sliding_window
            parts.append(
                "sliding window "
                + "x".join(map(str, window.roi_size))
                + f" overlap {window.overlap:g}"
            )
        if given.shape is not None:
            parts.append("shape " + "x".join(map(str, given.shape)))
        return ", ".join(parts)

    def _check_output(self, output: Output, shape: tuple[int, int, int]) -> str:
        _, card, model = self._loaded()
        where = f"{self.name}: model {model.name!r}"
        top = max(card.output.labels)
        if card.task == "detection":
            if not isinstance(output, dict) or any(
                k not in output for k in ("boxes", "scores", "labels")
            ):
                raise InputRefused(f"{where}: a detector must give boxes, scores and labels")
            boxes, scores, labels = output["boxes"], output["scores"], output["labels"]
            if boxes.ndim != 2 or boxes.shape[1] != 6 or scores.shape != boxes.shape[:1]:
                raise InputRefused(
                    f"{where}: boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)}: "
                    "expected (M, 6) and (M,)"
                )
            if labels.shape != scores.shape:
                raise InputRefused(f"{where}: labels {tuple(labels.shape)} is not (M,)")
            return f"boxes {tuple(boxes.shape)}, scores {tuple(scores.shape)}"
        if not isinstance(output, torch.Tensor):
            raise InputRefused(f"{where}: the network gives several outputs; a {card.task} one")
        if card.task == "classification":
            if output.ndim != 2 or output.shape[1] <= top:
                raise InputRefused(
                    f"{where}: output {tuple(output.shape)}; the card's labels need (1, > {top})"
                )
            return f"classes {tuple(output.shape)}"
        channels = output.shape[1] if output.ndim == 5 else -1
        wanted = (
            1
            if card.output.activation == "none"
            else top
            if card.output.activation == "sigmoid"
            else top + 1
        )
        if output.ndim != 5 or tuple(output.shape[2:]) != shape or channels < wanted:
            raise InputRefused(
                f"{where}: output {tuple(output.shape)}; the card (activation "
                f"{card.output.activation}, labels up to {top}) needs (1, {wanted}"
                f"{'+' if card.output.activation != 'none' else ''}, {', '.join(map(str, shape))})"
            )
        return f"segmentation {tuple(output.shape)}"

    # -- running ----------------------------------------------------------------------

    def _infer(self, batch: torch.Tensor) -> Output:
        runtime, card, _ = self._loaded()
        window = card.input.sliding_window
        if window is None or card.task != "segmentation":
            return runtime(batch)

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            out = runtime(patch)
            if not isinstance(out, torch.Tensor):
                raise InputRefused(f"{self.name}: a segmentation network gives one tensor")
            return out.float()

        with torch.inference_mode():
            result = sliding_window_inference(
                batch,
                roi_size=window.roi_size,
                sw_batch_size=window.sw_batch_size,
                predictor=predictor,
                overlap=window.overlap,
                mode=window.mode,
            )
        return torch.as_tensor(result[0] if isinstance(result, tuple) else result)

    def _steps(self) -> list[Step]:
        _, card, _ = self._loaded()
        steps: list[Step] = []
        if card.input.spacing is not None:
            steps.append(Resample(card.input.spacing))
        norm = card.input.normalisation
        if norm.kind == "range":
            assert norm.a_min is not None and norm.a_max is not None
            steps.append(
                ScaleIntensityRange(norm.a_min, norm.a_max, norm.b_min, norm.b_max, norm.clip)
            )
        elif norm.kind == "zscore":
            steps.append(NormalizeIntensity(norm.nonzero))
        return steps

    def run(self, volume: Volume, device: str) -> PipelineResult:
        """Run the network on ``volume`` as its card says (see the module).

        Raises
        ------
        InputRefused
            The volume's modality is not one of the card's, or the network's
            output does not fit its card.
        """
        runtime, card, model = self._loaded()
        if volume.modality.upper() not in card.modalities:
            raise InputRefused(
                f"model {model.name} takes {', '.join(card.modalities)}, "
                f"not {volume.modality or 'a series without Modality'}"
            )
        if device != runtime.device and isinstance(runtime, TorchScriptRuntime):
            runtime.to(device)
        turn = Reorientation.of(
            volume, INDEX_ORDER if card.input.orientation == "dicom" else card.input.orientation
        )
        array = np.ascontiguousarray(turn.forward(volume.array), dtype=np.float32)
        image = torch.as_tensor(array)[None, None]
        spacing = turn.spacing(volume.spacing)
        for step in self._steps():
            image, spacing = step(image, spacing)
        if card.task == "classification":
            image = F.interpolate(image, size=card.input.check_shape, mode="trilinear")
        batch = image.expand(1, card.input.channels, *image.shape[2:]).contiguous()
        output = self._infer(batch)
        if card.task == "classification":
            return self._classification(output)
        if card.task == "detection":
            return self._detection(output, turn, array.shape, tuple(image.shape[2:]), volume)
        labels = turn.backward(self._labels(output, array.shape))
        return self._segmentation(labels, volume)

    def _labels(self, output: Output, shape: tuple[int, ...]) -> NDArray[np.uint8]:
        _, card, model = self._loaded()
        if not isinstance(output, torch.Tensor) or output.ndim != 5:
            raise InputRefused(f"{self.name}: model {model.name!r} gives no (1, K, X, Y, Z) map")
        logits = output.float()
        size = tuple(int(n) for n in shape)
        activation = card.output.activation
        if activation == "none":
            if tuple(logits.shape[2:]) != size:
                logits = F.interpolate(logits[:, :1], size=size, mode="nearest")
            labels = logits[0, 0].round().clamp(0, 255).to(torch.uint8)
        else:
            if tuple(logits.shape[2:]) != size:
                logits = F.interpolate(logits, size=size, mode="trilinear", align_corners=False)
            if activation == "softmax":
                labels = logits[0].argmax(dim=0).to(torch.uint8)
            else:
                probability = torch.sigmoid(logits[0])
                thresholds = torch.tensor(
                    [
                        card.output.threshold(card.output.labels[c + 1].name, 0.5)
                        if c + 1 in card.output.labels
                        else 2.0
                        for c in range(probability.shape[0])
                    ]
                ).view(-1, 1, 1, 1)
                above = probability >= thresholds
                best = torch.where(above, probability, torch.zeros_like(probability)).argmax(0)
                labels = torch.where(above.any(0), best + 1, torch.zeros_like(best)).to(torch.uint8)
        return np.asarray(labels.cpu().numpy(), dtype=np.uint8)

    def _segmentation(self, labels: NDArray[np.uint8], volume: Volume) -> PipelineResult:
        _, card, model = self._loaded()
        counts = np.bincount(labels.reshape(-1), minlength=256)
        stray = sorted(set(np.flatnonzero(counts).tolist()) - {0, *card.output.labels})
        if stray:
            raise InputRefused(
                f"{self.name}: model {model.name!r} gives label(s) {stray} its card lacks"
            )
        segments: list[Segment] = []
        measurements: list[Measurement] = []
        parts: list[str] = []
        for value, label in sorted(card.output.labels.items()):
            voxels = int(counts[value])
            if voxels == 0:
                parts.append(f"{label.name} not found")
                continue
            segments.append(
                Segment(
                    value,
                    label.name,
                    label.category.code,
                    label.type.code,
                    label.region.code if label.region is not None else None,
                )
            )
            ml = voxels * volume.voxel_volume_ml
            measurements.append(Measurement(VOLUME, ml, MILLILITER, value))
            parts.append(f"{label.name} {ml:.1f} mL")
        return PipelineResult(
            label_map=labels,
            segments=tuple(segments),
            measurements=tuple(measurements),
            models=(model.info,),
            summary=f"{model.name} {model.version}: {'; '.join(parts)}.",
        )

    def _classification(self, output: Output) -> PipelineResult:
        _, card, model = self._loaded()
        if not isinstance(output, torch.Tensor) or output.ndim != 2:
            raise InputRefused(f"{self.name}: model {model.name!r} gives no (1, K) classes")
        logits = output[0].float()
        activation = card.output.activation
        probability = (
            torch.softmax(logits, 0)
            if activation == "softmax"
            else torch.sigmoid(logits)
            if activation == "sigmoid"
            else logits.clamp(0, 1)
        )
        findings: list[Finding] = []
        parts: list[str] = []
        for index, label in sorted(card.output.labels.items()):
            value = float(probability[index])
            threshold = card.output.thresholds.get(label.name)
            findings.append(Finding(label.type.code, value, threshold))
            verdict = "" if threshold is None else (" (positive)" if value >= threshold else "")
            parts.append(f"{label.name} {value:.2f}{verdict}")
        return PipelineResult(
            findings=tuple(findings),
            models=(model.info,),
            summary=f"{model.name} {model.version}: {'; '.join(parts)}.",
        )

    def _detection(
        self,
        output: Output,
        turn: Reorientation,
        shape: tuple[int, ...],
        resampled: tuple[int, ...],
        volume: Volume,
    ) -> PipelineResult:
        _, card, model = self._loaded()
        if not isinstance(output, dict) or any(
            k not in output for k in ("boxes", "scores", "labels")
        ):
            raise InputRefused(f"{self.name}: model {model.name!r} gives no boxes, scores, labels")
        boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 6)
        scores = output["scores"].detach().float().cpu().numpy().reshape(-1)
        kinds = output["labels"].detach().cpu().numpy().reshape(-1).astype(int)
        found: list[Detection] = []
        for box, score, kind in zip(boxes, scores, kinds, strict=True):
            label = card.output.labels.get(int(kind))
            if label is None:
                raise InputRefused(
                    f"{self.name}: model {model.name!r} gives label {int(kind)} its card lacks"
                )
            threshold = card.output.threshold(label.name, 0.5)
            if float(score) < threshold:
                continue
            placed = box_in_volume(box, turn, shape, resampled, volume.array.shape)
            if placed is None:
                continue
            found.append(
                Detection(
                    label.type.code, float(np.clip(score, 0, 1)), placed, threshold, label.name
                )
            )
        found.sort(key=lambda d: -d.score)
        parts = [f"{d.name} (score {d.score:.2f}) at slice {int(d.centre[0]) + 1}" for d in found]
        return PipelineResult(
            detections=tuple(found),
            models=(model.info,),
            summary=f"{model.name} {model.version}: "
            + (f"{len(found)} finding(s): {'; '.join(parts)}" if found else "nothing found")
            + ".",
        )


class TorchScriptPipeline(ExportedPipeline):
    """A TorchScript network (``torch.jit.save``) and its model card."""

    name = "torchscript"
    suffixes = (".pt", ".pth", ".ts", ".torchscript")

    def open(self, path: Path, device: str) -> Runtime:
        """Load the TorchScript file with torch."""
        return TorchScriptRuntime(path, device)


class OnnxPipeline(ExportedPipeline):
    """An ONNX network and its model card, run with onnxruntime."""

    name = "onnx"
    suffixes = (".onnx",)

    def open(self, path: Path, device: str) -> Runtime:
        """Open the ONNX file with onnxruntime."""
        return OnnxRuntime(path, device)
