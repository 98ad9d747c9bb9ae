"""The ``nnunet`` pipeline: a site's nnU-Net v2 trained-model folder as a segmentation pipeline.

The node YAML names the model manifest and the options::

    runner:
      pipelines:
        nnunet:
          nnunet:
            model: totalseg-organs      # <runner.models_dir>/totalseg-organs.yaml
            folds: [0]                  # default: every fold the manifest lists
            tile_step_size: 0.5
            mirroring: false
            orientation: RAS            # voxel axes of the training images
            code_map: /etc/dicomnode/nnunet-codes.yaml   # default: TotalSegmentator's

How a volume is run
-------------------
1. The runner verifies every file the manifest lists (SHA-256) before
   :meth:`NnUNetPipeline.load`; only the verified folder is loaded.
2. The volume's array becomes the array nnU-Net's SimpleITK reader would give
   for the training images' orientation (:mod:`.orientation`), with the
   spacing in the same axis order.
3. nnU-Net's own ``nnUNetPredictor.predict_single_npy_array`` preprocesses it
   as the plans say (transpose, crop, normalise, resample to the plans'
   spacing), predicts with a sliding window over the chosen folds, and
   resamples the segmentation back to the array it was given.
4. The segmentation goes back to the volume's grid by the inverse
   transposition and flips: voxel for voxel in the source geometry.
5. Each label present becomes a segment coded from the code map, with its
   volume (mL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from dicomnode.protocol import (
    ARTIFICIAL_INTELLIGENCE_CODE,
    Algorithm,
    Code,
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

from .codes import TOTALSEGMENTATOR, CodeMap, read_code_map
from .model import Fold, ModelFolder, read_model_folder
from .orientation import Reorientation

__all__ = ["MILLILITER", "OPTIONS", "SETTING", "VOLUME", "NnUNetPipeline"]

LOGGER = logging.getLogger(__name__)

SETTING = "runner.pipelines.nnunet.nnunet"
"""Where the node YAML configures the pipeline."""

OPTIONS = frozenset({"model", "folds", "tile_step_size", "mirroring", "orientation", "code_map"})

VOLUME = Code("118565006", "SCT", "Volume")
MILLILITER = Code("mL", "UCUM", "milliliter")

_VOLUMETRIC = frozenset({"CT", "MR", "PT", "NM"})


class NnUNetPipeline:
    """Run an nnU-Net v2 trained-model folder on a volume; one segment per label present.

    Labels come from the folder's dataset.json, their codes from the code map
    (:mod:`.codes`); a label without a code keeps its name and is coded Tissue.
    Provenance: the manifest's name, version and the SHA-256 of its checkpoint.
    """

    name: str = "nnunet"
    version: str = "1.0.0"
    input: InputSpec = InputSpec(modalities=_VOLUMETRIC, min_slices=1)
    algorithm: Algorithm = Algorithm(family=ARTIFICIAL_INTELLIGENCE_CODE, trained_model=True)

    def __init__(self) -> None:
        self.required_models: tuple[str, ...] = ()
        self.folds: tuple[Fold, ...] | None = None
        self.tile_step_size = 0.5
        self.mirroring = False
        self.orientation = "RAS"
        self.code_map_path: Path = TOTALSEGMENTATOR
        self._predictor: Any = None
        self._folder: ModelFolder | None = None
        self._model: ModelFile | None = None
        self._codes: CodeMap | None = None
        self._device = "cpu"

    def configure(self, options: Mapping[str, object]) -> None:
        """Take the options of ``runner.pipelines.nnunet.nnunet`` (see the module).

        Raises
        ------
        InputRefused
            An option this pipeline does not know, or a value of the wrong kind.
        """
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise InputRefused(f"nnunet has no option {', '.join(unknown)}")
        model = options.get("model")
        if model is not None:
            self.required_models = (str(model),)
        folds = options.get("folds")
        if folds is not None:
            if not isinstance(folds, list | tuple):
                raise InputRefused(f"{SETTING}.folds must be a list, got {folds!r}")
            self.folds = tuple(f if f == "all" else int(str(f)) for f in folds)
        step = options.get("tile_step_size")
        if step is not None:
            self.tile_step_size = float(str(step))
        if options.get("mirroring") is not None:
            self.mirroring = bool(options["mirroring"])
        if options.get("orientation") is not None:
            self.orientation = str(options["orientation"])
            Reorientation.check(self.orientation)
        if options.get("code_map") is not None:
            self.code_map_path = Path(str(options["code_map"]))

    def check_setup(self, models: Mapping[str, ModelFile]) -> None:
        """Check the manifest's folder and the code map without loading the network.

        Raises
        ------
        InputRefused
            No model is configured, or the folder or the code map is not usable.
        """
        folder = read_model_folder(self._model_file(models), self.folds)
        codes = read_code_map(self.code_map_path)
        unmapped = sorted(n for n in folder.labels.values() if not codes.meaning(n).mapped)
        if unmapped:
            LOGGER.warning(
                "nnunet: %d label(s) have no code in %s and will be coded Tissue: %s",
                len(unmapped),
                codes.path,
                ", ".join(unmapped),
            )

    def _model_file(self, models: Mapping[str, ModelFile]) -> ModelFile:
        if not self.required_models:
            raise InputRefused(f"nnunet has no model: set {SETTING}.model in the node's YAML")
        return models[self.required_models[0]]

    def load(self, device: str, models: Mapping[str, ModelFile] | None = None) -> None:
        """Load the verified model folder with nnU-Net's predictor on ``device``.

        Raises
        ------
        InputRefused
            No model configured, or the folder, its folds or the code map are
            not usable (the run is DEAD: a retry cannot fix the configuration).
        """
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        model = self._model_file(models or {})
        folder = read_model_folder(model, self.folds)
        self._codes = read_code_map(self.code_map_path)
        if folder.modalities:
            self.input = InputSpec(modalities=folder.modalities, min_slices=1)
        on_gpu = device.startswith("cuda")
        predictor = nnUNetPredictor(
            tile_step_size=self.tile_step_size,
            use_gaussian=True,
            use_mirroring=self.mirroring,
            perform_everything_on_device=on_gpu,
            device=torch.device(device),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        try:
            predictor.initialize_from_trained_model_folder(
                str(folder.root), use_folds=folder.folds, checkpoint_name=folder.checkpoint
            )
        except (KeyError, RuntimeError, ValueError, OSError) as exc:
            hint = (
                " (the installed torchvision is not built for this torch: nnU-Net's trainer "
                "lookup imports it; install the torchvision of this torch build)"
                if "torchvision" in str(exc)
                else ""
            )
            raise InputRefused(
                f"nnunet: model {model.name!r} {model.version}: nnU-Net cannot load "
                f"{folder.root}: {type(exc).__name__}: {exc}{hint}"
            ) from exc
        self._predictor, self._folder, self._model, self._device = predictor, folder, model, device
        LOGGER.info(
            "nnunet: %s %s on %s, folds %s, %d label(s), orientation %s",
            model.name,
            model.version,
            device,
            ",".join(map(str, folder.folds)),
            len(folder.labels),
            self.orientation,
        )

    def self_test(self) -> ModelReport:
        """Run the loaded network once on a random patch of the plans' patch size.

        Raises
        ------
        InputRefused
            The network fails on that patch or gives fewer channels than
            dataset.json's labels need.
        """
        if self._predictor is None or self._folder is None or self._model is None:
            raise RuntimeError("nnunet: load() was not called")
        predictor, folder, model = self._predictor, self._folder, self._model
        patch = tuple(int(n) for n in predictor.configuration_manager.patch_size)
        channels = len(predictor.dataset_json.get("channel_names", {})) or 1
        generator = torch.Generator().manual_seed(0)
        batch = torch.randn((1, channels, *patch), generator=generator)
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = predictor.network(batch.to(torch.device(self._device)))
        except RuntimeError as exc:
            raise InputRefused(
                f"nnunet: model {model.name!r}: the network fails on a patch "
                f"{tuple(batch.shape)}: {exc}"
            ) from exc
        seconds = time.perf_counter() - started
        if isinstance(output, tuple | list):
            output = output[0]
        out = torch.as_tensor(output)
        needed = predictor.label_manager.num_segmentation_heads
        if out.shape[1] < needed:
            raise InputRefused(
                f"nnunet: model {model.name!r}: the network gives {tuple(out.shape)}; "
                f"dataset.json's labels need {needed} channel(s)"
            )
        spacing = "x".join(f"{v:g}" for v in predictor.configuration_manager.spacing)
        return ModelReport(
            name=model.name,
            version=model.version,
            sha256=model.sha256,
            parameters=int(sum(p.numel() for p in predictor.network.parameters())),
            device=self._device,
            input_contract=(
                f"segmentation, modalities {'/'.join(sorted(self.input.modalities))}, "
                f"orientation {self.orientation}, plans spacing {spacing} mm, "
                f"patch {'x'.join(map(str, patch))}, folds {','.join(map(str, folder.folds))}"
            ),
            labels=tuple(
                f"{value}: {name} ({m.type.scheme} {m.type.value} {m.type.meaning})"
                if (m := self._codes.meaning(name)).mapped
                else f"{value}: {name} (not coded)"
                for value, name in sorted(folder.labels.items())
            )
            if self._codes is not None
            else (),
            output=f"input {tuple(batch.shape)} -> {tuple(out.shape)}",
            seconds=seconds,
        )

    def run(self, volume: Volume, device: str) -> PipelineResult:
        """Segment ``volume`` with the model.

        Returns
        -------
        PipelineResult
            ``label_map`` in the volume's grid, a segment and a volume
            measurement per label present, the model's provenance, a summary.
        """
        if self._predictor is None or self._folder is None or self._model is None:
            raise RuntimeError("nnunet: load() was not called")
        if device != self._device:
            self._predictor.device = torch.device(device)
            self._device = device
        labels = self.predict(volume)
        return self._result(labels, volume)

    def predict(self, volume: Volume) -> NDArray[np.uint8]:
        """The model's label map of ``volume``, in the volume's grid."""
        turn = Reorientation.of(volume, self.orientation)
        image = turn.forward(volume.array)[None]
        seg = self._predictor.predict_single_npy_array(
            image, {"spacing": turn.spacing(volume.spacing)}, None, None, False
        )
        return turn.backward(np.asarray(seg).astype(np.uint8, copy=False))

    def _result(self, labels: NDArray[np.uint8], volume: Volume) -> PipelineResult:
        assert self._folder is not None and self._model is not None and self._codes is not None
        counts = np.bincount(labels.reshape(-1), minlength=256)
        segments: list[Segment] = []
        measurements: list[Measurement] = []
        found: list[str] = []
        uncoded: list[str] = []
        for value, name in sorted(self._folder.labels.items()):
            voxels = int(counts[value])
            if voxels == 0:
                continue
            meaning = self._codes.meaning(name)
            if not meaning.mapped:
                uncoded.append(name)
            segments.append(
                Segment(
                    value,
                    name,
                    meaning.category,
                    meaning.type,
                    meaning.region,
                    laterality=meaning.laterality,
                )
            )
            ml = voxels * volume.voxel_volume_ml
            measurements.append(Measurement(VOLUME, ml, MILLILITER, value))
            found.append(f"{name} {ml:.1f} mL")
        stray = sorted(set(np.flatnonzero(counts).tolist()) - {0, *self._folder.labels})
        if stray:
            raise RuntimeError(f"nnunet: the model output label(s) {stray} its dataset.json lacks")
        model = self._model
        summary = (
            f"nnU-Net {model.name} {model.version}: "
            + (f"{len(found)} structure(s): {'; '.join(found)}" if found else "nothing found")
            + (f". Not coded (no entry in the code map): {', '.join(uncoded)}" if uncoded else "")
            + "."
        )
        return PipelineResult(
            label_map=labels,
            segments=tuple(segments),
            measurements=tuple(measurements),
            models=(ModelInfo(model.name, model.version, model.sha256),),
            summary=summary,
        )
