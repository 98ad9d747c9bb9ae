"""Model manifests: which weights a pipeline loads, and proof they are the right ones.

A manifest is a YAML file ``<models_dir>/<name>.yaml``::

    name: cxr-classify
    version: 1.0.0
    file: cxr-classify-1.0.0.pt         # relative to the manifest's folder
    sha256: 3b1f...                      # 64 hex digits
    labels:
      - {index: 0, name: pneumothorax, threshold: 0.5,
         code: {value: "36118008", scheme: SCT, meaning: Pneumothorax}}
    input: {modalities: [CR, DX], size: [224, 224], intensity: "window to [0, 1]"}
    intended_use: Triage of adult frontal chest radiographs; not for diagnosis.

A model made of several files (an nnU-Net trained-model folder) lists the
others under ``files``, each with its own SHA-256::

    files:
      - {file: Dataset291/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json, sha256: 9c0e...}

The runner checks the file's SHA-256 before a pipeline may load it, and
``dicomnode config check`` and ``serve`` check it before the node starts
(:mod:`dicomnode.runner.requirements`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dicomnode.errors import ModelError
from dicomnode.protocol import Code, ModelFile


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSpec(_Model):
    """A coded concept in a manifest."""

    value: str = Field(min_length=1)
    scheme: str = Field(min_length=1)
    meaning: str = Field(min_length=1)


class LabelSpec(_Model):
    """One output of the model."""

    index: int = Field(ge=0)
    name: str = Field(min_length=1)
    code: CodeSpec
    threshold: float | None = Field(default=None, ge=0, le=1)


class FileSpec(_Model):
    """A further file of the model and its SHA-256."""

    file: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


class ModelManifest(_Model):
    """The schema of a manifest file."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    version: str = Field(min_length=1)
    file: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    labels: tuple[LabelSpec, ...] = ()
    input: dict[str, Any] = Field(default_factory=dict)
    intended_use: str = Field(min_length=1)
    files: tuple[FileSpec, ...] = ()


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> ModelManifest:
    """Read and validate one manifest file.

    Raises
    ------
    ModelError
        Missing, not YAML, or invalid (each problem with its field).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"model manifest {path}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"model manifest {path}: not valid YAML ({exc})") from exc
    try:
        return ModelManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ModelError(f"model manifest {path}: {problems}") from exc


def verify_model(models_dir: Path, name: str) -> ModelFile:
    """Find ``<models_dir>/<name>.yaml``, check its weights, return them.

    Raises
    ------
    ModelError
        The manifest is missing or invalid, names another model, or the
        weights file or one of its further ``files`` is missing or has another
        SHA-256 than declared.
    """
    path = models_dir / f"{name}.yaml"
    if not path.is_file():
        raise ModelError(f"model {name!r}: no manifest at {path}")
    manifest = read_manifest(path)
    if manifest.name != name:
        raise ModelError(f"model {name!r}: manifest {path} declares name {manifest.name!r}")
    weights = _verified(path.parent, manifest.file, manifest.sha256, name, manifest.version)
    files = tuple(
        _verified(path.parent, item.file, item.sha256, name, manifest.version)
        for item in manifest.files
    )
    return ModelFile(
        name=manifest.name,
        version=manifest.version,
        sha256=manifest.sha256.lower(),
        path=weights,
        labels=tuple(
            (label.index, label.name, Code(label.code.value, label.code.scheme, label.code.meaning))
            for label in manifest.labels
        ),
        thresholds={
            label.name: label.threshold for label in manifest.labels if label.threshold is not None
        },
        extra={"input": dict(manifest.input), "intended_use": manifest.intended_use},
        files=files,
    )


def _verified(folder: Path, file: str, sha256: str, name: str, version: str) -> Path:
    """``folder / file``, resolved, once its SHA-256 is ``sha256``."""
    weights = (folder / file).resolve()
    if not weights.is_file():
        raise ModelError(
            f"model {name!r} {version}: weights file {weights} is missing "
            "(weights are never downloaded; see models/README.md)"
        )
    actual = sha256_of(weights)
    if actual.lower() != sha256.lower():
        raise ModelError(
            f"model {name!r} {version}: weights file {weights.name} has SHA-256 "
            f"{actual[:16]}..., the manifest expects {sha256.lower()[:16]}...: "
            "refusing to load it"
        )
    return weights
