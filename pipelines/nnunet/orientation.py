"""The volume's array in the axes an nnU-Net model was trained on, and back.

nnU-Net takes an image as its SimpleITK reader gives it: an array
``(k, j, i)`` over the voxel axes ``i, j, k`` of the training files, with the
spacing in the same order. Which way ``i, j, k`` pointed in the patient is
not in the model folder; it is a property of the training data, named here
by nibabel's axis codes of the voxel axes ``i, j, k``:

``RAS``
    NIfTI files in closest-canonical orientation: TotalSegmentator's models
    (TotalSegmentator reorients every input with ``as_closest_canonical``) and
    every model whose plans name ``NibabelIOWithReorient``.
``LAS``, ``LPS``...
    Files as a converter wrote them (dcm2niix writes axial CT as ``LAS``).
``dicom``
    The series as SimpleITK reads DICOM: ``i`` along the rows, ``j`` down the
    columns, ``k`` along the slice normal, which is the volume's own array
    ``(slices, rows, columns)`` as it is.

The transposition and flips are exact (no resampling), so the prediction
maps back voxel for voxel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dicomnode.protocol import Vector3, Volume

__all__ = ["DICOM_ORDER", "Reorientation"]

DICOM_ORDER = "dicom"
"""No reorientation: the array as SimpleITK reads the DICOM series."""

# RAS world axis and direction of each code; volume directions are LPS
_WORLD_AXIS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0)}
_WORLD_AXIS["I"] = (2, -1.0)


@dataclass(frozen=True)
class Reorientation:
    """Transposition and flips from the volume's array to nnU-Net's array.

    Attributes
    ----------
    axes : (int, int, int)
        ``axes[a]`` is the volume axis (0 slices, 1 rows, 2 columns) that
        becomes nnU-Net axis ``a``.
    flips : (bool, bool, bool)
        Whether nnU-Net axis ``a`` runs opposite to its volume axis.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @staticmethod
    def check(orientation: str) -> None:
        """Raise ``ValueError`` unless ``orientation`` is ``dicom`` or valid axis codes."""
        if orientation == DICOM_ORDER:
            return
        codes = orientation.upper()
        if len(codes) != 3 or any(c not in _WORLD_AXIS for c in codes):
            raise ValueError(
                f"orientation must be 'dicom' or three of R/L, A/P, S/I: {orientation!r}"
            )
        if sorted(_WORLD_AXIS[c][0] for c in codes) != [0, 1, 2]:
            raise ValueError(f"orientation {orientation!r} names a world axis twice")

    @classmethod
    def of(cls, volume: Volume, orientation: str) -> Reorientation:
        """The reorientation of ``volume`` for a model trained on ``orientation``.

        Parameters
        ----------
        volume : Volume
            Its direction vectors decide.
        orientation : str
            Axis codes of the training files' voxel axes ``i, j, k`` (e.g.
            ``RAS``), or :data:`DICOM_ORDER`.

        Raises
        ------
        ValueError
            If ``orientation`` is neither ``dicom`` nor three letters naming
            each world axis once.
        """
        cls.check(orientation)
        if orientation == DICOM_ORDER:
            return cls((0, 1, 2), (False, False, False))
        # nnU-Net's axes are (k, j, i): the codes reversed
        targets = [_WORLD_AXIS[c] for c in reversed(orientation.upper())]
        ras = [
            (-float(v[0]), -float(v[1]), float(v[2]))
            for v in (volume.slice_direction, volume.column_direction, volume.row_direction)
        ]

        def fit(axes: tuple[int, ...]) -> float:
            return sum(abs(ras[v][world]) for v, (world, _) in zip(axes, targets, strict=True))

        best = max(itertools.permutations(range(3)), key=fit)
        axes = (best[0], best[1], best[2])
        flips = tuple(
            ras[v][world] * sign < 0 for v, (world, sign) in zip(axes, targets, strict=True)
        )
        return cls(axes, (flips[0], flips[1], flips[2]))

    def forward(self, array: NDArray[np.float32]) -> NDArray[np.float32]:
        """The volume's array in nnU-Net's axes (contiguous)."""
        turned = np.transpose(array, self.axes)
        flipped = tuple(a for a in range(3) if self.flips[a])
        return np.ascontiguousarray(np.flip(turned, axis=flipped) if flipped else turned)

    def backward(self, array: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """An array in nnU-Net's axes back in the volume's grid (contiguous)."""
        flipped = tuple(a for a in range(3) if self.flips[a])
        unflipped = np.flip(array, axis=flipped) if flipped else array
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        return np.ascontiguousarray(np.transpose(unflipped, inverse))

    def spacing(self, spacing: Vector3) -> list[float]:
        """The volume's spacing (slices, rows, columns) in nnU-Net's axis order."""
        return [float(spacing[a]) for a in self.axes]
