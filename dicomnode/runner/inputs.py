"""A multi-input pipeline's further series: picked by role, resampled onto the run's grid.

A pipeline that takes several series (a brain tumour model's T1, T1c, T2 and
FLAIR) declares ``input_roles`` (:class:`~dicomnode.protocol.MultiInput`):
role to a regular expression its series' Series Description must match. The
run's own series (the one its rule picked) is the grid of the result; for
each role, :func:`pick_role_series` picks among the round's series the one
whose Series Description matches (the most instances, ties to the first
Series Instance UID), and :func:`resample_onto` brings its volume onto the
run's grid (trilinear, in patient coordinates; outside it: the series'
minimum), so every channel lies voxel for voxel on the result's grid.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pydicom
from numpy.typing import NDArray
from scipy.ndimage import map_coordinates

from dicomnode.errors import InputError
from dicomnode.protocol import Volume

__all__ = ["pick_role_series", "resample_onto"]


def pick_role_series(roles: Mapping[str, str], files: Sequence[str]) -> dict[str, list[str]]:
    """The files of the series each role names, among ``files`` (a round's instances).

    Raises
    ------
    InputError
        A role's pattern is not a regular expression, or no series matches it
        (the message names the role and the pattern, not the descriptions).
    """
    series: dict[str, list[str]] = defaultdict(list)
    descriptions: dict[str, str] = {}
    for path in files:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SeriesDescription"]
        )
        uid = str(ds.get("SeriesInstanceUID", ""))
        series[uid].append(path)
        descriptions.setdefault(uid, str(ds.get("SeriesDescription", "") or ""))
    picked: dict[str, list[str]] = {}
    for role, pattern in roles.items():
        try:
            wanted = re.compile(pattern)
        except re.error as exc:
            raise InputError(f"input role {role!r}: {pattern!r} is not a regex: {exc}") from exc
        matching = sorted(
            (uid for uid, text in descriptions.items() if wanted.search(text)),
            key=lambda uid: (-len(series[uid]), uid),
        )
        if not matching:
            raise InputError(
                f"input role {role!r}: no series of the study has a Series Description "
                f"matching {pattern!r} ({len(series)} series received)"
            )
        picked[role] = sorted(series[matching[0]])
    return picked


def _axes(volume: Volume) -> NDArray[np.float64]:
    """Columns: the patient-coordinate step of one voxel along slices, rows, columns."""
    return np.stack(
        [
            np.asarray(volume.slice_direction, dtype=np.float64) * volume.spacing[0],
            np.asarray(volume.column_direction, dtype=np.float64) * volume.spacing[1],
            np.asarray(volume.row_direction, dtype=np.float64) * volume.spacing[2],
        ],
        axis=1,
    )


def resample_onto(volume: Volume, grid: Volume) -> Volume:
    """``volume``'s values on ``grid``'s voxels (trilinear), as a volume of ``grid``'s geometry.

    Raises
    ------
    InputError
        The two series are not in one Frame of Reference (their patient
        coordinates cannot be compared).
    """
    if volume.frame_of_reference_uid != grid.frame_of_reference_uid:
        raise InputError(
            "an input series is in another Frame of Reference than the run's series; "
            "their voxels cannot be matched"
        )
    if (
        volume.array.shape == grid.array.shape
        and np.allclose(volume.origin, grid.origin, atol=1e-3)
        and np.allclose(_axes(volume), _axes(grid), atol=1e-4)
    ):
        array = volume.array
    else:
        indices = np.indices(grid.array.shape, dtype=np.float64).reshape(3, -1)
        world = np.asarray(grid.origin, dtype=np.float64)[:, None] + _axes(grid) @ indices
        inside = np.linalg.solve(_axes(volume), world - np.asarray(volume.origin)[:, None])
        # voxels that fall on voxels (within rounding) take their values exactly
        nearest = np.round(inside)
        inside = np.where(np.abs(inside - nearest) < 1e-6, nearest, inside)
        array = map_coordinates(
            volume.array,
            inside,
            order=1,
            mode="constant",
            cval=float(volume.array.min()),
        ).reshape(grid.array.shape)
    return replace(
        grid,
        array=np.ascontiguousarray(array, dtype=np.float32),
        modality=volume.modality,
        series_instance_uid=volume.series_instance_uid,
        attributes=volume.attributes,
    )
