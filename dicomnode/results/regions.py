"""Where on the source images a result lies: outlines and points a viewer can place.

A report names a segment's region by reference to the SEG; viewers that list
measurements also want planar coordinates on one source image. This module
finds them in the result's label map and heatmaps, in the image coordinates
of DICOM SR SCOORD content items: (column, row) pairs where the top left
corner of the top left pixel is (0, 0), so a pixel's centre is at
(column + 0.5, row + 0.5) (PS3.3 C.18.6.1.1).

Nothing here writes DICOM; :mod:`.sr` turns the results into content items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from skimage.measure import approximate_polygon, find_contours

__all__ = ["Outline", "Point", "key_slice", "outline", "outlines", "peak", "whole_image"]

_TOLERANCE = 0.5
"""Largest distance (pixels) that simplifying an outline may move it."""


@dataclass(frozen=True)
class Outline:
    """A closed polygon on one slice: ``points`` (N x 2, column and row; the
    first point repeated last) on slice ``index`` of the volume."""

    index: int
    points: NDArray[np.float32]


@dataclass(frozen=True)
class Point:
    """One point (column, row) on slice ``index`` of the volume."""

    index: int
    column: float
    row: float

    @property
    def points(self) -> NDArray[np.float32]:
        """The point as a 1 x 2 array, as SCOORD graphic data."""
        return np.array([[self.column, self.row]], dtype=np.float32)


def key_slice(mask: NDArray[np.bool_]) -> int | None:
    """The slice of ``mask`` (slices, rows, columns) with the largest area
    (the lowest index among equals); ``None`` when the mask is empty."""
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        return None
    return int(np.argmax(areas))


def outlines(plane: NDArray[np.bool_], index: int) -> list[Outline]:
    """Every closed outline of ``plane`` (rows, columns): the boundaries of
    its regions and of their holes, largest enclosed area first.

    Parameters
    ----------
    plane : ndarray of bool
        One slice of a mask.
    index : int
        The slice's index in the volume (kept with each outline).

    Returns
    -------
    list of Outline
        Closed polygons following the pixel edges' midpoints, simplified to
        within half a pixel. Empty when the plane is.
    """
    if not plane.any():
        return []
    padded = np.pad(plane.astype(np.float32), 1)
    found: list[Outline] = []
    contours: list[NDArray[np.float64]] = find_contours(padded, 0.5)  # type: ignore[no-untyped-call]
    for contour in contours:
        simplified: NDArray[np.float64] = approximate_polygon(  # type: ignore[no-untyped-call]
            contour, tolerance=_TOLERANCE
        )
        if len(simplified) < 4:  # a closed polygon repeats its first point
            continue
        # padded (row, column) of pixel centres -> SCOORD (column, row)
        points = np.stack([simplified[:, 1] - 0.5, simplified[:, 0] - 0.5], axis=1)
        points[-1] = points[0]
        found.append(Outline(index, points.astype(np.float32)))
    found.sort(key=lambda item: -_area(item.points))
    return found


def outline(mask: NDArray[np.bool_]) -> Outline | None:
    """The outline of ``mask``'s largest region on its key slice
    (:func:`key_slice`); ``None`` when the mask is empty."""
    index = key_slice(mask)
    if index is None:
        return None
    found = outlines(mask[index], index)
    return found[0] if found else None


def peak(heat: NDArray[np.floating[Any]], threshold: float) -> Point | None:
    """The hottest voxel of ``heat`` (slices, rows, columns) as a point at its
    pixel's centre; ``None`` unless the heat there exceeds ``threshold``."""
    clean = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    flat = int(np.argmax(clean))
    index, row, column = np.unravel_index(flat, clean.shape)
    if not clean[index, row, column] > threshold:
        return None
    return Point(int(index), float(column) + 0.5, float(row) + 0.5)


def whole_image(shape: tuple[int, ...]) -> Outline:
    """The border of slice 0 of a volume of ``shape`` (slices, rows, columns): the
    region of a finding about the whole image."""
    rows, columns = float(shape[1]), float(shape[2])
    corners = [[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows], [0.0, 0.0]]
    return Outline(0, np.array(corners, dtype=np.float32))


def _area(points: NDArray[np.float32]) -> float:
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    return abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))) / 2.0
