"""The ``monai-bundle`` pipeline: a site's MONAI bundle folder as a segmentation pipeline.

The node YAML names the folder::

    runner:
      pipelines:
        monai-bundle:
          bundle: /srv/bundles/spleen_ct_segmentation

and the runner hands it to :meth:`MonaiBundlePipeline.configure` before
:meth:`~MonaiBundlePipeline.load` (``dicomnode run --bundle DIR`` does the
same offline).

How a volume is run
-------------------
1. The volume's array ``(slices, rows, columns)`` is turned to the bundle's
   axes (:class:`~.orientation.Reorientation`: the config's ``Orientationd``
   axis codes, usually RAS; without one, the loader's column, row, slice
   order) and becomes a tensor ``(1, 1, X, Y, Z)``.
2. The config's ``Spacingd``, ``ScaleIntensityRanged`` and
   ``NormalizeIntensityd`` are redone in config order (:mod:`.bundle`).
3. The config's ``inferer`` (e.g. ``SlidingWindowInferer``) runs the network.
4. Back on the unresampled grid (trilinear on the logits: what ``Invertd``
   does), the config's own ``postprocessing`` runs on the prediction
   ``(C, X, Y, Z)``: the transforms that need nothing but it
   (``Activationsd``, ``AsDiscreted``, ``KeepLargestConnectedComponentd``,
   ``FillHolesd``, ``RemoveSmallObjectsd``, ``LabelFilterd``), in config
   order, as MONAI builds them (``Invertd`` and ``SaveImaged`` have nothing
   to do; others are named in a warning). What it gives is the label map:
   one channel of label values (``argmax=True``); one-hot channels (their
   argmax); or, after a sigmoid, one channel per label (channel ``c`` is
   label ``c + 1``, named by ``channel_def`` ``c``), overlapping labels
   resolved so the smallest wins (the innermost of nested regions, as a
   brain tumour's enhancing part inside its core inside the whole tumour).
   A config without ``AsDiscreted`` gets the argmax over channels (one
   channel: logit above 0).
5. The label map goes back to the volume's grid by the inverse transposition
   and flips, so it is in the source geometry voxel for voxel.

A **classification** bundle (its network gives ``(1, K)``, usually after a
``Resized`` in its preprocessing) gives one finding per class instead: its
probability from the postprocessing's ``Activationsd`` (softmax without one),
named by ``channel_def`` and coded locally (:func:`class_code`).

A **detection** bundle (its config defines a ``detector``, MONAI's
``RetinaNetDetector``, as the model zoo's lung_nodule_ct_detection does)
runs steps 1 and 2, then the detector as its ``detector_ops`` set it up
(sliding window, box selector, target keys). Each box (MONAI's ``xyzxyz``
mode, in voxels of the preprocessed image) whose score reaches the threshold
(``score_threshold`` in the node YAML, else the bundle's box selector
``score_thresh``) becomes a :class:`~dicomnode.protocol.Detection`, its box
mapped back to the volume's grid (:func:`~.orientation.box_in_volume`), its
class named by ``channel_def`` (or the ``labels`` option) and coded locally.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
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
    ModelInfo,
    ModelReport,
    PipelineResult,
    Segment,
    Volume,
)

from .bundle import Bundle, BundleError, read_bundle
from .orientation import Reorientation, box_in_volume

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "LOCAL_SCHEME",
    "MILLILITER",
    "SETTING",
    "TISSUE",
    "VOLUME",
    "MonaiBundlePipeline",
    "class_code",
    "segment_type",
]

LOGGER = logging.getLogger(__name__)

SETTING = "runner.pipelines.monai-bundle.bundle"
"""Where the node YAML names the bundle folder."""

INPUTS = "runner.pipelines.monai-bundle.inputs"
"""Where the node YAML names the input series' roles of a multi-input bundle."""

SCORE_THRESHOLD = "runner.pipelines.monai-bundle.score_threshold"
"""Where the node YAML sets the score from which a detection bundle reports a box."""

LABELS = "runner.pipelines.monai-bundle.labels"
"""Where the node YAML names a detection bundle's classes (index: name)."""

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
VOLUME = Code("118565006", "SCT", "Volume")
MILLILITER = Code("mL", "UCUM", "milliliter")

_TYPES = {
    "spleen": Code("78961009", "SCT", "Spleen"),
    "liver": Code("10200004", "SCT", "Liver"),
    "kidney": Code("64033007", "SCT", "Kidney"),
    "lung": Code("39607008", "SCT", "Lung"),
}

_VOLUMETRIC = frozenset({"CT", "MR", "PT", "NM", "US"})


LOCAL_SCHEME = "99DICOMNODE"
"""Coding scheme of a classification bundle's classes (bundles carry no codes)."""


def class_code(index: int, name: str) -> Code:
    """The local code of class ``index`` named ``name``: value ``MONAI<index>-<NAME>``
    (16 characters at most), meaning the name."""
    word = "".join(c for c in name.upper() if c.isalnum())
    return Code(f"MONAI{index}-{word}"[:16], LOCAL_SCHEME, name[:64])


def segment_type(name: str) -> Code:
    """The SNOMED CT type of a ``channel_def`` name: a few well-known organs,
    else ``Tissue`` (the name itself then tells what the segment is)."""
    key = name.strip().lower().replace("_", " ")
    return _TYPES.get(key) or _TYPES.get(key.removesuffix("s")) or TISSUE


class MonaiBundlePipeline:
    """Run a MONAI bundle's network on a volume; one segment per output channel.

    Labels are the bundle's output channels (channel 0 is background), named
    from ``network_data_format.outputs.pred.channel_def`` of its metadata.
    Each segment present gets its volume (mL). Provenance: the bundle's name,
    version and the SHA-256 of ``models/model.pt`` (checked against the
    checksum the bundle declares, if it declares one).

    Parameters
    ----------
    bundle : Path, optional
        The bundle folder; otherwise given by :meth:`configure`.
    """

    name: str = "monai-bundle"
    version: str = "1.0.0"
    input: InputSpec = InputSpec(modalities=_VOLUMETRIC, min_slices=1)
    algorithm: Algorithm = Algorithm(family=ARTIFICIAL_INTELLIGENCE_CODE, trained_model=True)

    def __init__(self, bundle: Path | None = None) -> None:
        self.bundle_dir = bundle
        self._bundle: Bundle | None = None
        self._device = "cpu"
        self._multi_label = False
        self.input_roles: dict[str, str] = {}
        """Role to a Series Description regex, in the bundle's channel order
        (:class:`~dicomnode.protocol.MultiInput`); empty: one series."""
        self.score_threshold: float | None = None
        """A detection bundle's reporting threshold; ``None``: the bundle's own."""
        self.class_names: dict[int, str] = {}
        """A detection bundle's class names, over its ``channel_def``."""

    def configure(self, options: Mapping[str, object]) -> None:
        """Take the options of ``runner.pipelines.monai-bundle``: ``bundle`` (a
        folder), ``inputs`` (role: Series Description regex), and for a
        detection bundle ``score_threshold`` (0 to 1) and ``labels`` (class
        index: name).

        Raises
        ------
        BundleError
            If an option is not one this pipeline knows, or its value is wrong
            (the message names the setting).
        """
        unknown = sorted(set(options) - {"bundle", "inputs", "score_threshold", "labels"})
        if unknown:
            raise BundleError(f"monai-bundle has no option {', '.join(unknown)}")
        if options.get("bundle") is not None:
            self.bundle_dir = Path(str(options["bundle"]))
        inputs = options.get("inputs")
        if inputs is not None:
            if not isinstance(inputs, Mapping) or not inputs:
                raise BundleError(
                    f"{INPUTS}: must map each role to a Series Description regex, got {inputs!r}"
                )
            self.input_roles = {str(role): str(pattern) for role, pattern in inputs.items()}
        threshold = options.get("score_threshold")
        if threshold is not None:
            try:
                value = float(str(threshold))
            except ValueError:
                value = -1.0
            if not 0.0 <= value <= 1.0:
                raise BundleError(
                    f"{SCORE_THRESHOLD}: must be a score from 0 to 1, got {threshold!r}"
                )
            self.score_threshold = value
        labels = options.get("labels")
        if labels is not None:
            if not isinstance(labels, Mapping) or not all(
                str(k).isdigit() and str(v).strip() for k, v in labels.items()
            ):
                raise BundleError(f"{LABELS}: must map each class index to a name, got {labels!r}")
            self.class_names = {int(str(k)): str(v).strip() for k, v in labels.items()}

    def _check_channels(self, bundle: Bundle) -> None:
        """Refuse a bundle whose input channels do not match the configured roles."""
        roles = len(self.input_roles)
        if bundle.in_channels > 1 and roles != bundle.in_channels:
            raise BundleError(
                f"monai-bundle: {bundle.name} takes {bundle.in_channels} input channels "
                f"(metadata num_channels); {INPUTS} names {roles} role(s): set one role per "
                "channel, in channel order (role: SeriesDescription regex)"
            )
        if roles > 1 and bundle.in_channels != roles:
            raise BundleError(
                f"monai-bundle: {INPUTS} names {roles} roles, but {bundle.name} takes "
                f"{bundle.in_channels} input channel(s)"
            )

    @property
    def bundle(self) -> Bundle:
        """The loaded bundle.

        Raises
        ------
        RuntimeError
            Before :meth:`load`.
        """
        if self._bundle is None:
            raise RuntimeError("monai-bundle: load() was not called")
        return self._bundle

    def check_setup(self, models: Mapping[str, ModelFile]) -> None:
        """Check that the bundle folder is set, readable and valid.

        Called by ``dicomnode config check`` and before ``serve`` starts: the
        bundle is read as :meth:`load` reads it (metadata, inference config,
        ``network_def``, weights and their declared checksum, the weights
        fitting the network), on the CPU, its network run once on a random
        input of the declared shape (:meth:`self_test`), and let go.

        Parameters
        ----------
        models : mapping
            Unused: a bundle carries its own weights.

        Raises
        ------
        BundleError
            Naming the setting or the file that is missing or wrong.
        """
        if self.bundle_dir is None:
            raise BundleError(f"no bundle folder: set {SETTING} in the node's YAML")
        bundle = read_bundle(Path(self.bundle_dir), "cpu")
        self._check_channels(bundle)
        probe = MonaiBundlePipeline(Path(self.bundle_dir))
        probe._bundle = bundle
        report = probe.self_test()
        LOGGER.info(
            "monai-bundle: %s %s at %s is valid and runs (%s)",
            bundle.name,
            bundle.version,
            bundle.root,
            report.output,
        )

    def load(self, device: str) -> None:
        """Read the bundle, verify its weights and load its network on ``device``.

        After loading, :attr:`input` accepts the modalities the bundle's
        metadata declares for its image (all volumetric ones when it declares
        none).

        Raises
        ------
        BundleError
            No bundle folder is configured (the message names
            ``runner.pipelines.monai-bundle.bundle``), or the bundle cannot be
            read or its weights loaded (see :func:`.bundle.read_bundle`). An
            :class:`~dicomnode.protocol.InputRefused`, so the run is DEAD at
            once: a retry cannot fix the configuration.
        """
        if self.bundle_dir is None:
            raise BundleError(
                "monai-bundle has no bundle folder: set "
                f"{SETTING} in the node's YAML (dicomnode run: --bundle DIR)"
            )
        self._device = device
        bundle = read_bundle(Path(self.bundle_dir), device)
        self._check_channels(bundle)
        self._bundle = bundle
        if bundle.modalities:
            self.input = InputSpec(modalities=bundle.modalities, min_slices=1)
        LOGGER.info(
            "monai-bundle: %s %s on %s (sha256 %s, labels %s)",
            bundle.name,
            bundle.version,
            device,
            bundle.sha256[:12],
            ", ".join(
                self._class_names().values()
                if bundle.detector is not None
                else (bundle.labels.get(c, str(c)) for c in range(1, bundle.out_channels))
            ),
        )

    def self_test(self) -> ModelReport:
        """Run the bundle's network once on a random input of its declared shape
        (metadata ``spatial_shape``, else the inferer's ``roi_size``, else 32 cubed).

        Raises
        ------
        BundleError
            The network fails on that input or gives fewer channels than its
            metadata declares.
        """
        bundle = self.bundle
        if bundle.detector is not None:
            return self._self_test_detector()
        shape = bundle.input_shape or (32, 32, 32)
        generator = torch.Generator().manual_seed(0)
        batch = torch.randn((1, bundle.in_channels, *shape), generator=generator)
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = bundle.network(batch.to(torch.device(self._device)))
        except RuntimeError as exc:
            raise BundleError(
                f"monai-bundle: {bundle.name}'s network fails on an input {tuple(batch.shape)}: "
                f"{exc}"
            ) from exc
        seconds = time.perf_counter() - started
        if isinstance(output, tuple | list):
            output = output[0]
        out = torch.as_tensor(output)
        if out.ndim not in (2, 5) or out.shape[1] < bundle.out_channels:
            raise BundleError(
                f"monai-bundle: {bundle.name}'s network gives {tuple(out.shape)} for "
                f"{tuple(batch.shape)}; its metadata declares {bundle.out_channels} channel(s)"
            )
        steps = ", ".join(type(step).__name__ for step in bundle.steps) or "none"
        post = ", ".join(type(t).__name__ for t in bundle.postprocessing) or "argmax"
        return ModelReport(
            name=bundle.name,
            version=bundle.version,
            sha256=bundle.sha256,
            parameters=int(sum(p.numel() for p in bundle.network.parameters())),
            device=self._device,
            input_contract=(
                f"{'classification' if out.ndim == 2 else 'segmentation'}, "
                f"modalities {'/'.join(sorted(self.input.modalities))}, "
                f"orientation {bundle.axcodes or 'columns, rows, slices'}, "
                f"{bundle.in_channels} channel(s), preprocessing {steps}, "
                f"inferer {type(bundle.inferer).__name__}, postprocessing {post}"
            ),
            labels=tuple(f"{value}: {name}" for value, name in sorted(bundle.labels.items())),
            output=f"input {tuple(batch.shape)} -> {tuple(out.shape)}",
            seconds=seconds,
        )

    def _self_test_detector(self) -> ModelReport:
        """Run a detection bundle's detector once, without its sliding window,
        on a random input of the declared shape (else twice the network's
        ``size_divisible``, 32 voxels at least per axis)."""
        bundle = self.bundle
        detector = bundle.detector
        divisible = tuple(int(d) for d in getattr(detector, "size_divisible", (16, 16, 16)))
        shape = bundle.input_shape or tuple(max(32, 2 * d) for d in divisible)
        generator = torch.Generator().manual_seed(0)
        batch = torch.rand((1, bundle.in_channels, *shape), generator=generator)
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = detector(batch.to(torch.device(self._device)), use_inferer=False)
            boxes, _, _ = self._boxes(output)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(
                f"monai-bundle: {bundle.name}'s detector fails on an input {tuple(batch.shape)}: "
                f"{exc}"
            ) from exc
        seconds = time.perf_counter() - started
        steps = ", ".join(type(step).__name__ for step in bundle.steps) or "none"
        threshold = self._threshold()
        names = self._class_names()
        return ModelReport(
            name=bundle.name,
            version=bundle.version,
            sha256=bundle.sha256,
            parameters=int(sum(p.numel() for p in bundle.network.parameters())),
            device=self._device,
            input_contract=(
                f"detection ({type(detector).__name__}), "
                f"modalities {'/'.join(sorted(self.input.modalities))}, "
                f"orientation {bundle.axcodes or 'columns, rows, slices'}, "
                f"{bundle.in_channels} channel(s), preprocessing {steps}, "
                f"sliding window {'yes' if getattr(detector, 'inferer', None) else 'no'}, "
                f"score threshold {threshold:g}"
            ),
            labels=tuple(f"{index}: {name}" for index, name in sorted(names.items())),
            output=f"input {tuple(batch.shape)} -> {len(boxes)} box(es)",
            seconds=seconds,
        )

    def _threshold(self) -> float:
        """The score from which a detection is reported: the node YAML's, else the bundle's."""
        if self.score_threshold is not None:
            return self.score_threshold
        return self.bundle.score_threshold if self.bundle.score_threshold is not None else 0.5

    def _class_names(self) -> dict[int, str]:
        bundle = self.bundle
        names = {index: f"Class {index}" for index in range(bundle.out_channels)}
        names.update(bundle.labels)
        names.update(self.class_names)
        return names

    def _boxes(
        self, output: Any
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
        """Boxes ``(M, 6)``, scores and labels of the detector's output for one image."""
        detector = self.bundle.detector
        found = output[0] if isinstance(output, list | tuple) else output
        box_key = str(getattr(detector, "target_box_key", "boxes"))
        label_key = str(getattr(detector, "target_label_key", "labels"))
        score_key = str(getattr(detector, "pred_score_key", f"{label_key}_scores"))
        missing = [k for k in (box_key, label_key, score_key) if k not in found]
        if missing:
            raise KeyError(f"the detector's output has no {', '.join(missing)}")
        boxes = torch.as_tensor(found[box_key]).detach().float().cpu().numpy().reshape(-1, 6)
        scores = torch.as_tensor(found[score_key]).detach().float().cpu().numpy().reshape(-1)
        labels = torch.as_tensor(found[label_key]).detach().cpu().numpy().reshape(-1)
        return boxes, scores, labels.astype(np.int64)

    def run(self, volume: Volume, device: str) -> PipelineResult:
        """Segment ``volume`` with the bundle's network.

        Parameters
        ----------
        volume : Volume
            A volume of a modality the bundle declares.
        device : str
            Where the network runs (it moves there when loaded elsewhere).

        Returns
        -------
        PipelineResult
            ``label_map`` in the volume's grid, a segment and a volume
            measurement per label present, the bundle's provenance, a summary.

        Raises
        ------
        InputRefused
            If the volume's modality is not the bundle's.
        """
        bundle = self.bundle
        if volume.modality.upper() not in self.input.modalities:
            raise InputRefused(
                f"bundle {bundle.name} takes {', '.join(sorted(self.input.modalities))}, "
                f"not {volume.modality or 'a series without Modality'}"
            )
        if device != self._device:
            bundle.network.to(torch.device(device))
            self._device = device
        if bundle.in_channels > 1:
            raise InputRefused(
                f"bundle {bundle.name} takes {bundle.in_channels} series; set {INPUTS}"
            )
        return self._run_channels(volume, [volume])

    def run_inputs(
        self, volume: Volume, inputs: Mapping[str, Volume], device: str
    ) -> PipelineResult:
        """Run a multi-input bundle: the roles' volumes (already on ``volume``'s
        grid) are its input channels, in the order of :attr:`input_roles`.

        Raises
        ------
        InputRefused
            A role has no volume, or a volume is not on ``volume``'s grid.
        """
        bundle = self.bundle
        missing = [role for role in self.input_roles if role not in inputs]
        if missing:
            raise InputRefused(f"bundle {bundle.name}: no series for role(s) {', '.join(missing)}")
        channels = [inputs[role] for role in self.input_roles]
        for role, channel in zip(self.input_roles, channels, strict=True):
            if channel.array.shape != volume.array.shape:
                raise InputRefused(f"bundle {bundle.name}: role {role} is not on the run's grid")
        if device != self._device:
            bundle.network.to(torch.device(device))
            self._device = device
        return self._run_channels(volume, channels)

    def _run_channels(self, volume: Volume, channels: list[Volume]) -> PipelineResult:
        bundle = self.bundle
        turn = Reorientation.of(volume, bundle.axcodes)
        stack = np.stack([turn.forward(channel.array) for channel in channels])
        if bundle.detector is not None:
            return self._detection(stack, turn, volume)
        classes, labels = self._predict(stack, turn.spacing(volume.spacing))
        if classes is not None:
            return self._classification(classes)
        assert labels is not None
        return self._result(turn.backward(labels), volume)

    def _detection(
        self, array: NDArray[np.float32], turn: Reorientation, volume: Volume
    ) -> PipelineResult:
        """Detections of a detection bundle on ``array`` ``(C, X, Y, Z)`` (in the
        bundle's axes): the preprocessing, the detector (with its sliding
        window when the bundle sets one), each box at or above the threshold
        mapped back to the volume's grid."""
        bundle = self.bundle
        detector = bundle.detector
        with torch.inference_mode():
            image = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
            image = image.to(torch.device(self._device))[None]
            shape = tuple(image.shape[2:])
            spacing = turn.spacing(volume.spacing)
            for step in bundle.steps:
                image, spacing = step(image, spacing)
            sliding = getattr(detector, "inferer", None) is not None
            output = detector(image, use_inferer=sliding)
        try:
            boxes, scores, kinds = self._boxes(output)
        except KeyError as exc:
            raise InputRefused(f"bundle {bundle.name}: {exc.args[0]}") from exc
        threshold = self._threshold()
        names = self._class_names()
        resampled = tuple(image.shape[2:])
        found: list[Detection] = []
        for box, score, kind in zip(boxes, scores, kinds, strict=True):
            if float(score) < threshold:
                continue
            placed = box_in_volume(box, turn, shape, resampled, volume.array.shape)
            if placed is None:
                continue
            name = names.get(int(kind)) or f"Class {int(kind)}"
            found.append(
                Detection(
                    class_code(int(kind), name),
                    float(np.clip(score, 0.0, 1.0)),
                    placed,
                    threshold,
                    name,
                )
            )
        found.sort(key=lambda d: -d.score)
        parts = [f"{d.name} (score {d.score:.2f}) at slice {int(d.centre[0]) + 1}" for d in found]
        return PipelineResult(
            detections=tuple(found),
            models=(ModelInfo(bundle.name, bundle.version, bundle.sha256),),
            summary=f"MONAI bundle {bundle.name} {bundle.version}: "
            + (f"{len(found)} finding(s): {'; '.join(parts)}" if found else "nothing found")
            + ".",
        )

    def _classification(self, logits: torch.Tensor) -> PipelineResult:
        """Findings of a classification bundle's output ``(K,)``: probabilities
        from its postprocessing's ``Activationsd`` (softmax without one; one
        output: sigmoid), each class named by ``channel_def`` and given a
        local code (bundles carry no codes)."""
        bundle = self.bundle
        activations = [
            t for t in bundle.postprocessing if type(t).__name__.startswith("Activations")
        ]
        if activations:
            data: dict[str, Any] = {bundle.post_key: logits}
            for transform in activations:
                data = transform(data)
            probability = torch.as_tensor(data[bundle.post_key]).float()
        else:
            probability = torch.sigmoid(logits) if logits.numel() == 1 else logits.softmax(0)
        findings: list[Finding] = []
        parts: list[str] = []
        for index in range(int(probability.numel())):
            name = bundle.labels.get(index) or f"Class {index}"
            value = float(probability[index].clamp(0, 1))
            findings.append(Finding(class_code(index, name), value))
            parts.append(f"{name} {value:.2f}")
        return PipelineResult(
            findings=tuple(findings),
            models=(ModelInfo(bundle.name, bundle.version, bundle.sha256),),
            summary=f"MONAI bundle {bundle.name} {bundle.version}: {'; '.join(parts)}.",
        )

    def _predict(
        self, array: NDArray[np.float32], spacing: tuple[float, float, float]
    ) -> tuple[torch.Tensor | None, NDArray[np.uint8] | None]:
        """Class logits ``(K,)`` of a classification bundle, or labels (in the
        bundle's axes) of ``array`` ``(C, X, Y, Z)`` (in the bundle's axes)."""
        bundle = self.bundle
        with torch.inference_mode():
            image = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
            image = image.to(torch.device(self._device))[None]
            shape = tuple(image.shape[2:])
            for step in bundle.steps:
                image, spacing = step(image, spacing)
            output = bundle.inferer(inputs=image, network=bundle.network)
            if isinstance(output, tuple | list):
                output = output[0]  # deep supervision: the full-resolution head
            if isinstance(output, Mapping):
                output = next(iter(output.values()))
            logits = torch.as_tensor(output).float()
            if logits.ndim == 2:  # (1, K): a classification bundle
                return logits[0].cpu(), None
            if tuple(logits.shape[2:]) != shape:
                logits = F.interpolate(logits, size=shape, mode="trilinear", align_corners=False)
            self._multi_label = False
            if bundle.discretises:
                labels = self._postprocess(logits[0])
            elif logits.shape[1] == 1:
                labels = (logits[0, 0] > 0).to(torch.uint8)
            else:
                labels = logits[0].argmax(dim=0).to(torch.uint8)
            return None, np.asarray(labels.cpu().numpy(), dtype=np.uint8)

    def _postprocess(self, prediction: torch.Tensor) -> torch.Tensor:
        """Labels ``(X, Y, Z)`` from the bundle's own postprocessing of
        ``prediction`` ``(C, X, Y, Z)`` (see the module)."""
        bundle = self.bundle
        data: dict[str, Any] = {bundle.post_key: prediction}
        for transform in bundle.postprocessing:
            data = transform(data)
        pred = torch.as_tensor(data[bundle.post_key]).float()
        if pred.ndim == 3:
            pred = pred[None]
        if pred.shape[0] == 1:
            return pred[0].round().clamp(0, 255).to(torch.uint8)
        if not bundle.multi_label:
            return pred.argmax(dim=0).to(torch.uint8)  # one-hot
        # several labels of their own (sigmoid, thresholded): channel c is label
        # c + 1; where they overlap the smallest wins (the innermost of nested
        # regions, e.g. enhancing tumour inside tumour core inside whole tumour)
        self._multi_label = True
        labels = torch.zeros(pred.shape[1:], dtype=torch.uint8, device=pred.device)
        present = pred > 0.5
        sizes = present.reshape(pred.shape[0], -1).sum(dim=1)
        for channel in sorted(range(pred.shape[0]), key=lambda c: (-int(sizes[c]), c)):
            labels[present[channel]] = channel + 1
        return labels

    def _result(self, labels: NDArray[np.uint8], volume: Volume) -> PipelineResult:
        bundle = self.bundle
        counts = np.bincount(labels.reshape(-1), minlength=max(bundle.out_channels + 1, 2))
        if self._multi_label:  # channel c is label c + 1
            names = {
                value: bundle.labels.get(value - 1) or f"Label {value}"
                for value in range(1, bundle.out_channels + 1)
            }
        else:
            names = {
                value: bundle.labels.get(value) or f"Label {value}"
                for value in range(1, max(bundle.out_channels, 2))
            }
        if bundle.out_channels == 1 and 0 in bundle.labels and 1 not in bundle.labels:
            names[1] = bundle.labels[0]  # one sigmoid channel: channel 0 is the structure
        stray = sorted(set(np.flatnonzero(counts).tolist()) - {0, *names})
        if stray:
            raise InputRefused(
                f"bundle {bundle.name}: its postprocessing gives label(s) {stray}, "
                f"beyond its {bundle.out_channels} output channel(s)"
            )
        segments: list[Segment] = []
        measurements: list[Measurement] = []
        parts: list[str] = []
        for value, name in names.items():
            voxels = int(counts[value]) if value < len(counts) else 0
            if voxels == 0:
                parts.append(f"{name} not found")
                continue
            segments.append(Segment(value, name, ANATOMICAL_STRUCTURE, segment_type(name)))
            ml = voxels * volume.voxel_volume_ml
            measurements.append(Measurement(VOLUME, ml, MILLILITER, value))
            parts.append(f"{name} {ml:.1f} mL")
        return PipelineResult(
            label_map=labels,
            segments=tuple(segments),
            measurements=tuple(measurements),
            models=(ModelInfo(bundle.name, bundle.version, bundle.sha256),),
            summary=f"MONAI bundle {bundle.name} {bundle.version}: {'; '.join(parts)}.",
        )
