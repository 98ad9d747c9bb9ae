"""An nnU-Net v2 trained-model folder, as its manifest lists it.

The folder is what ``nnUNetv2_train`` leaves, and what TotalSegmentator
downloads for each task::

    Dataset291_.../nnUNetTrainer__nnUNetPlans__3d_fullres/
        dataset.json    labels (name to value), channel_names
        plans.json      configurations: spacing, patch size, network...
        fold_0/checkpoint_final.pth

The manifest's ``file`` is one fold's checkpoint; ``files`` lists
``plans.json``, ``dataset.json`` and the other folds' checkpoints, each with
its SHA-256. Only verified files are used: a fold whose checkpoint the
manifest does not list is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.protocol import InputRefused, ModelFile

__all__ = ["ModelFolder", "ModelFolderError", "read_model_folder"]

Fold = int | str


class ModelFolderError(InputRefused):
    """The model folder is incomplete, unverified or not an nnU-Net v2 folder.

    An :class:`~dicomnode.protocol.InputRefused`: the run ends DEAD at once.
    """


@dataclass(frozen=True)
class ModelFolder:
    """What the pipeline needs to know of a verified model folder.

    Attributes
    ----------
    root : Path
        The folder (holding dataset.json, plans.json, fold_N/).
    checkpoint : str
        The checkpoints' file name (``checkpoint_final.pth``).
    folds : tuple
        The folds to run, each verified.
    labels : mapping of int to str
        Output value to dataset.json's label name (no background).
    modalities : frozenset of str
        DICOM modalities of the input channel (empty: any volumetric one).
    reader : str
        The plans' ``image_reader_writer``.
    """

    root: Path
    checkpoint: str
    folds: tuple[Fold, ...]
    labels: Mapping[int, str]
    modalities: frozenset[str]
    reader: str


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"nnunet: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"nnunet: {path} is not a JSON object")
    return data


def _fold_of(path: Path, root: Path, checkpoint: str) -> Fold | None:
    if path.parent.parent != root or path.name != checkpoint:
        return None
    name = path.parent.name
    if not name.startswith("fold_"):
        return None
    fold = name.removeprefix("fold_")
    return int(fold) if fold.isdigit() else fold if fold == "all" else None


def read_model_folder(model: ModelFile, folds: Sequence[Fold] | None = None) -> ModelFolder:
    """The model folder of a verified manifest.

    Parameters
    ----------
    model : ModelFile
        Verified by the runner: ``path`` is ``<folder>/fold_N/<checkpoint>``,
        ``files`` the folder's other files.
    folds : sequence, optional
        The folds to run; default every fold whose checkpoint is listed.

    Raises
    ------
    ModelFolderError
        The manifest's file is not a fold's checkpoint, plans.json,
        dataset.json or a requested fold is not among the verified files, the
        model takes more than one input channel, or its labels do not fit 1..255.
    """
    verified = {model.path.resolve(), *(p.resolve() for p in model.files)}
    root = model.path.resolve().parent.parent
    checkpoint = model.path.name
    if _fold_of(model.path.resolve(), root, checkpoint) is None:
        raise ModelFolderError(
            f"nnunet: model {model.name!r}: the manifest's file must be a fold's checkpoint "
            f"(<folder>/fold_N/{checkpoint}), not {model.path}"
        )
    for needed in ("plans.json", "dataset.json"):
        if (root / needed).resolve() not in verified:
            raise ModelFolderError(
                f"nnunet: model {model.name!r}: {root / needed} is not in the manifest's files; "
                "list it with its sha256 (only verified files are loaded)"
            )
    listed = sorted(
        (f for f in (_fold_of(p, root, checkpoint) for p in verified) if f is not None), key=str
    )
    chosen = tuple(folds) if folds else tuple(listed)
    missing = [f for f in chosen if f not in listed]
    if missing:
        raise ModelFolderError(
            f"nnunet: model {model.name!r}: fold(s) {', '.join(map(str, missing))} requested but "
            f"the manifest lists the checkpoints of fold(s) {', '.join(map(str, listed))} only"
        )
    dataset = _json(root / "dataset.json")
    plans = _json(root / "plans.json")
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if not isinstance(channels, Mapping) or len(channels) != 1:
        count = len(channels) if isinstance(channels, Mapping) else "?"
        raise ModelFolderError(
            f"nnunet: model {model.name!r} takes {count} input channels; "
            "this pipeline gives it one series (one channel)"
        )
    channel = str(next(iter(channels.values()))).upper()
    modalities = (
        frozenset({"CT"})
        if channel == "CT"
        else frozenset({"MR"})
        if channel.startswith(("MR", "T1", "T2", "FLAIR"))
        else frozenset()
    )
    return ModelFolder(
        root=root,
        checkpoint=checkpoint,
        folds=chosen,
        labels=_labels(dataset, model.name),
        modalities=modalities,
        reader=str(plans.get("image_reader_writer", "")),
    )


def _labels(dataset: Mapping[str, Any], model: str) -> dict[int, str]:
    """Output value to label name, from dataset.json's ``labels`` (regions too)."""
    declared = dataset.get("labels")
    if not isinstance(declared, Mapping) or not declared:
        raise ModelFolderError(f"nnunet: model {model!r}: dataset.json has no labels")
    named = {str(k): v for k, v in declared.items() if str(k) not in ("background", "ignore")}
    labels: dict[int, str] = {}
    if any(isinstance(v, list | tuple) for v in named.values()):
        order = dataset.get("regions_class_order")
        if not isinstance(order, list) or len(order) != len(named):
            raise ModelFolderError(
                f"nnunet: model {model!r}: region labels need a regions_class_order in dataset.json"
            )
        labels = {int(value): name for name, value in zip(named, order, strict=True)}
    else:
        labels = {int(value): name for name, value in named.items()}
    labels.pop(0, None)
    if labels and (min(labels) < 1 or max(labels) > 255):
        raise ModelFolderError(
            f"nnunet: model {model!r}: label values {min(labels)}..{max(labels)} do not fit 1..255"
        )
    return labels
