"""Settings of the ``nnunet`` pipeline: ``runner.pipelines.nnunet.nnunet``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["NnUNetSettings"]


class NnUNetSettings(BaseModel):
    """Which nnU-Net v2 trained-model folder runs, and how.

    The folder's files are listed, with their SHA-256, in the model manifest
    ``<runner.models_dir>/<model>.yaml``; nothing else is loaded.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="The model manifest's name (<runner.models_dir>/<model>.yaml).",
    )
    folds: tuple[int | str, ...] | None = Field(
        default=None,
        description="Folds to run (e.g. [0] or ['all']); default every fold the manifest lists.",
    )
    tile_step_size: float = Field(
        default=0.5, gt=0, le=1, description="Sliding-window step, as a fraction of the patch."
    )
    mirroring: bool = Field(
        default=False, description="Test-time mirroring: up to 8x slower, slightly smoother."
    )
    orientation: str = Field(
        default="RAS",
        pattern=r"^(dicom|[RLAPSIrlapsi]{3})$",
        description=(
            "Voxel axes of the training images: RAS (TotalSegmentator, NibabelIOWithReorient), "
            "LAS etc., or 'dicom' (the series as SimpleITK reads it)."
        ),
    )
    code_map: Path | None = Field(
        default=None,
        description="YAML map of label names to codes; default the shipped TotalSegmentator map.",
    )

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: tuple[int | str, ...] | None) -> tuple[int | str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("folds must name at least one fold (or be left out)")
        for fold in value:
            if (isinstance(fold, str) and fold != "all") or (isinstance(fold, int) and fold < 0):
                raise ValueError(f"a fold is a number from 0 or 'all', got {fold!r}")
        return value
