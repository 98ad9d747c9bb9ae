"""Between a :class:`~dicomnode.protocol.Volume`'s grid and the array a bundle expects.

A volume's ``array`` is ``(slices, rows, columns)``: axis 0 runs along
``slice_direction``, axis 1 (rows) along ``column_direction`` and axis 2
(columns) along ``row_direction``, all in DICOM patient coordinates (LPS+:
x towards the patient's left, y posterior, z head).

A MONAI bundle gets its image from ``LoadImaged`` (spatial axes in the
image's index order ``x, y, z`` = columns, rows, slices) and usually turns it
with ``Orientationd(axcodes="RAS")``: axis 0 increases towards the patient's
right, axis 1 anterior, axis 2 superior (nibabel's codes; RAS+ world is LPS+
with x and y negated). :class:`Reorientation` is that turn as a transposition
plus flips, exact and invertible, so the prediction goes back to the volume's
grid voxel for voxel. For oblique series each bundle axis takes the volume
axis closest to it, as ``Orientationd`` does; nothing is resampled.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dicomnode.protocol import Vector3, Volume

__all__ = ["INDEX_ORDER", "Box", "Reorientation", "box_in_volume"]

Box = tuple[float, float, float, float, float, float]

INDEX_ORDER = ""
"""Axis codes meaning "no ``Orientationd``": the loader's order, columns, rows, slices."""

_WORLD_AXIS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0)}
_WORLD_AXIS["I"] = (2, -1.0)


@dataclass(frozen=True)
class Reorientation:
    """A transposition and flips from a volume array to a bundle array.

    Attributes
    ----------
    axes : (int, int, int)
        ``axes[a]`` is the volume axis (0 slices, 1 rows, 2 columns) that
        becomes bundle axis ``a``.
    flips : (bool, bool, bool)
        Whether bundle axis ``a`` runs opposite to its volume axis.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def __post_init__(self) -> None:
        if sorted(self.axes) != [0, 1, 2]:
            raise ValueError(f"Reorientation.axes must permute (0, 1, 2), got {self.axes}")

    @classmethod
    def of(cls, volume: Volume, axcodes: str = "RAS") -> Reorientation:
        """The reorientation of ``volume`` to ``axcodes``.

        Parameters
        ----------
        volume : Volume
            Its direction vectors decide.
        axcodes : str
            Three of ``RL``, ``AP``, ``SI`` (e.g. ``"RAS"``, ``"LPS"``), as
            ``Orientationd`` takes them; :data:`INDEX_ORDER` (empty) for the
            loader's order (columns, rows, slices) without flips.

        Raises
        ------
        ValueError
            If ``axcodes`` is not three letters naming each world axis once.
        """
        if axcodes == INDEX_ORDER:
            return cls((2, 1, 0), (False, False, False))
        codes = axcodes.upper()
        if len(codes) != 3 or any(c not in _WORLD_AXIS for c in codes):
            raise ValueError(f"axis codes must be three of R/L, A/P, S/I, got {axcodes!r}")
        targets = [_WORLD_AXIS[c] for c in codes]
        if sorted(world for world, _ in targets) != [0, 1, 2]:
            raise ValueError(f"axis codes {axcodes!r} name a world axis twice")
        ras = [
            _lps_to_ras(vector)
            for vector in (volume.slice_direction, volume.column_direction, volume.row_direction)
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
        """``array`` in the volume's grid to the bundle's axes (a view)."""
        turned = np.transpose(array, self.axes)
        flipped = [a for a in range(3) if self.flips[a]]
        return turned if not flipped else np.flip(turned, axis=tuple(flipped))

    def backward(self, array: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """``array`` in the bundle's axes back to the volume's grid (contiguous)."""
        flipped = [a for a in range(3) if self.flips[a]]
        unflipped = array if not flipped else np.flip(array, axis=tuple(flipped))
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        return np.ascontiguousarray(np.transpose(unflipped, inverse))

    def spacing(self, spacing: Vector3) -> tuple[float, float, float]:
        """The volume's spacing (slices, rows, columns) along the bundle's axes."""
        return (spacing[self.axes[0]], spacing[self.axes[1]], spacing[self.axes[2]])


def box_in_volume(
    box: Sequence[float] | NDArray[np.floating[Any]],
    turn: Reorientation,
    shape: Sequence[int],
    resampled: Sequence[int],
    volume_shape: Sequence[int],
) -> Box | None:
    """A network's box as a box in the volume's grid, clipped to it.

    Shared by the ``monai-bundle`` detection bundles and the ``torchscript``/
    ``onnx`` detectors.

    Parameters
    ----------
    box : sequence of 6 floats
        ``(a0, b0, c0, a1, b1, c1)`` along the network's axes (MONAI's
        ``xyzxyz`` box mode), in voxels of its (resampled) input, voxel ``i``
        spanning ``[i, i + 1)``.
    turn : Reorientation
        From the volume's grid to the network's axes.
    shape : three ints
        The turned volume's shape, before resampling.
    resampled : three ints
        The network input's spatial shape (after resampling).
    volume_shape : three ints
        The volume's ``(slices, rows, columns)``.

    Returns
    -------
    (slice0, row0, column0, slice1, row1, column1), or None
        As :class:`~dicomnode.protocol.Detection` takes it; ``None`` when
        nothing of the box is inside the volume.
    """
    low = [0.0, 0.0, 0.0]
    high = [0.0, 0.0, 0.0]
    for axis in range(3):
        scale = shape[axis] / resampled[axis]
        a0, a1 = sorted((float(box[axis]) * scale, float(box[axis + 3]) * scale))
        target = turn.axes[axis]
        n = volume_shape[target]
        if turn.flips[axis]:
            a0, a1 = n - a1, n - a0
        low[target], high[target] = max(0.0, a0), min(float(n), a1)
    if any(high[a] <= low[a] for a in range(3)):
        return None
    return (low[0], low[1], low[2], high[0], high[1], high[2])


def _lps_to_ras(vector: Vector3) -> tuple[float, float, float]:
    return (-float(vector[0]), -float(vector[1]), float(vector[2]))
