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

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray
from skimage.measure import find_contours

__all__ = [
    "Outline",
    "Point",
    "key_slice",
    "outline",
    "outlines",
    "peak",
    "simplify",
    "slice_outlines",
    "whole_image",
]

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


def simplify(
    chains: Sequence[NDArray[np.floating[Any]]], tolerance: float
) -> list[NDArray[np.float64]]:
    """Douglas-Peucker simplification of many polygonal chains at once.

    The result is that of :func:`skimage.measure.approximate_polygon` on each
    chain (the same distances: to the segment where a point projects inside
    it, else to the nearer end), but every chain and every segment still to
    be split is handled in one numpy pass per level of the recursion instead
    of one Python iteration per segment: the outlines of a whole volume cost
    a few dozen array operations.

    Parameters
    ----------
    chains : sequence of ndarray
        Chains of points (K x 2 each). A closed chain repeats its first point
        last; both ends of every chain are kept.
    tolerance : float
        Largest distance a dropped point may lie from the simplified chain.

    Returns
    -------
    list of ndarray
        The kept points of each chain, in order (float64).
    """
    if not chains:
        return []
    lengths = np.array([len(chain) for chain in chains], dtype=np.intp)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    coords = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, 2) for c in chains])
    keep = np.zeros(len(coords), dtype=bool)
    present = lengths > 0
    keep[offsets[:-1][present]] = True
    keep[offsets[1:][present] - 1] = True
    starts, ends = offsets[:-1][present], offsets[1:][present] - 1
    while starts.size:
        inner = ends - starts - 1
        open_ = inner > 0
        starts, ends, inner = starts[open_], ends[open_], inner[open_]
        if not starts.size:
            break
        # the points strictly inside each segment, segment after segment
        seg = np.repeat(np.arange(len(starts)), inner)
        first = np.cumsum(inner) - inner
        index = np.arange(int(inner.sum())) - first[seg] + starts[seg] + 1
        points = coords[index]
        r0, c0 = coords[starts, 0], coords[starts, 1]
        r1, c1 = coords[ends, 0], coords[ends, 1]
        dr, dc = r1 - r0, c1 - c0
        angle = -np.arctan2(dr, dc)
        sin, cos = np.sin(angle), np.cos(angle)
        offset = c0 * sin + r0 * cos
        dr0, dc0 = points[:, 0] - r0[seg], points[:, 1] - c0[seg]
        dr1, dc1 = points[:, 0] - r1[seg], points[:, 1] - c1[seg]
        perpendicular = (dr0 * dr[seg] + dc0 * dc[seg] > 0) & (-dr1 * dr[seg] - dc1 * dc[seg] > 0)
        distance = np.where(
            perpendicular,
            np.abs(points[:, 0] * cos[seg] + points[:, 1] * sin[seg] - offset[seg]),
            np.minimum(np.sqrt(dc0**2 + dr0**2), np.sqrt(dc1**2 + dr1**2)),
        )
        farthest = np.maximum.reduceat(distance, first)
        split = farthest > tolerance
        # the first point at the farthest distance, as argmax picks it
        candidates = np.where(distance == farthest[seg], np.arange(distance.size), distance.size)
        at = index[np.minimum.reduceat(candidates, first)][split]
        keep[at] = True
        starts, ends = np.concatenate([starts[split], at]), np.concatenate([at, ends[split]])
    return [coords[a:b][keep[a:b]] for a, b in pairwise(offsets)]


def _closed(contours: list[tuple[int, NDArray[np.float64]]]) -> list[Outline]:
    """Simplified outlines from marching-squares contours (padded plane
    coordinates), dropping those that simplify to fewer than three corners."""
    found: list[Outline] = []
    simplified = simplify([contour for _, contour in contours], _TOLERANCE)
    for (index, _), points in zip(contours, simplified, strict=True):
        if len(points) < 4:  # a closed polygon repeats its first point
            continue
        # padded (row, column) of pixel centres -> SCOORD (column, row)
        scoord = np.stack([points[:, 1] - 0.5, points[:, 0] - 0.5], axis=1)
        scoord[-1] = scoord[0]
        found.append(Outline(index, scoord.astype(np.float32)))
    return found


def _contours(plane: NDArray[np.bool_]) -> list[NDArray[np.float64]]:
    """Marching-squares contours of ``plane`` in padded coordinates (a row and
    a column of background added on every side, so every contour closes).
    Only the bounding box of what is set is searched."""
    rows = np.flatnonzero(plane.any(axis=1))
    columns = np.flatnonzero(plane.any(axis=0))
    top, left = int(rows[0]), int(columns[0])
    box = plane[top : int(rows[-1]) + 1, left : int(columns[-1]) + 1]
    padded = np.pad(box.astype(np.float32), 1)
    contours: list[NDArray[np.float64]] = find_contours(padded, 0.5)  # type: ignore[no-untyped-call]
    offset = np.array([top, left], dtype=np.float64)
    return [contour + offset for contour in contours]


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
    found = _closed([(index, contour) for contour in _contours(plane)])
    found.sort(key=lambda item: -_area(item.points))
    return found


def slice_outlines(mask: NDArray[np.bool_]) -> list[Outline]:
    """The outlines of every slice of ``mask`` (slices, rows, columns), slice
    by slice, each slice's largest first: :func:`outlines` of each slice, with
    the simplification of the whole volume done in one batch."""
    contours = [
        (int(index), contour)
        for index in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        for contour in _contours(mask[index])
    ]
    found = _closed(contours)
    found.sort(key=lambda item: (item.index, -_area(item.points)))
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
