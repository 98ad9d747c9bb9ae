"""From a projection radiograph to the network's input, and back to its grid.

The same steps serve inference (:mod:`.pipeline`) and training
(``models/train_cxr.py``), so the network always sees what it was trained on.

Steps
-----
1. **View check** (:func:`check_view`): the model is made for frontal (PA/AP)
   chest radiographs. View Position ``LL``, ``RL``, ``LATERAL`` or ``LAT``,
   or a Patient Orientation whose row direction is anterior or posterior
   (``A\\F``, ``P\\F``: what a lateral looks like) is refused; oblique views
   (``RLO``, ``LLO``) too. A missing View Position is accepted: many CR
   systems leave it empty, and refusing those would refuse most of a site's
   portable films; the orientation check still applies when present.
2. **Window to 0..1** (:func:`to_unit`): the VOI window of the header when
   the volume's attributes carry ``WindowCenter`` and ``WindowWidth`` (first
   value when several, ``VOILUTFunction`` LINEAR, LINEAR_EXACT or SIGMOID as
   in PS3.3 C.11.2.1.2), else the 1st to 99th percentile of the image. The
   result is in 0..1 whatever the bit depth (8, 12, 16 bit, signed or not).
3. **MONOCHROME1** images are inverted after windowing (``1 - x``), so the
   same radiograph stored as MONOCHROME1 or MONOCHROME2 gives the same
   tensor: bright is attenuating, as displayed.
4. **Size and pixel spacing** (:func:`fit`): the image is scaled, keeping its
   physical aspect ratio (row and column spacing may differ), so its longer
   side fills the network's grid, and centred with zero padding. The
   :class:`Placement` records where it went, and :meth:`Placement.to_source`
   maps a map in the network's grid (a heatmap) back to the source pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from dicomnode.protocol import InputRefused, Volume

__all__ = [
    "LATERAL_VIEWS",
    "OBLIQUE_VIEWS",
    "PERCENTILE_WINDOW",
    "Placement",
    "check_view",
    "fit",
    "preprocess",
    "to_unit",
]

LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT"})
"""View Position values of a lateral radiograph."""

OBLIQUE_VIEWS = frozenset({"RLO", "LLO", "OBLIQUE"})
"""View Position values of an oblique radiograph."""

PERCENTILE_WINDOW = (1.0, 99.0)
"""Percentiles of the image used as the window when the header gives none."""

_PERCENTILE_SAMPLES = 512  # the percentile window reads at most ~512x512 pixels


@dataclass(frozen=True)
class Placement:
    """Where a source image lies in the network's grid.

    Attributes
    ----------
    source_shape : (int, int)
        Rows and columns of the source image.
    grid_shape : (int, int)
        Rows and columns of the network's input.
    content_shape : (int, int)
        Rows and columns the source image occupies in the grid.
    top, left : int
        Offset of that content in the grid; the rest is zero padding.
    """

    source_shape: tuple[int, int]
    grid_shape: tuple[int, int]
    content_shape: tuple[int, int]
    top: int
    left: int

    def to_source(self, grid_map: torch.Tensor) -> torch.Tensor:
        """Map ``(..., grid rows, grid columns)`` to ``(..., source rows, source columns)``.

        The content region is cut out of the grid and resized (bilinear,
        pixel centres aligned as in :func:`fit`) to the source size, so a
        value at a grid pixel lands on the source pixels it was computed from.
        """
        if tuple(grid_map.shape[-2:]) != self.grid_shape:
            raise ValueError(
                f"map of shape {tuple(grid_map.shape)} is not in grid {self.grid_shape}"
            )
        rows, columns = self.content_shape
        content = grid_map[..., self.top : self.top + rows, self.left : self.left + columns]
        lead = content.shape[:-2]
        flat = content.reshape(-1, 1, rows, columns).float()
        if (rows, columns) == self.source_shape:
            resized = flat
        else:
            resized = F.interpolate(
                flat, size=self.source_shape, mode="bilinear", align_corners=False
            )
        return resized.reshape(*lead, *self.source_shape)


def check_view(attributes: Mapping[str, str], pipeline: str = "cxr-classify") -> None:
    """Refuse a radiograph that is not a frontal view (see the module notes).

    Raises
    ------
    InputRefused
        For a lateral or oblique View Position, or a Patient Orientation of a
        lateral; the message names the attribute and its value.
    """
    made_for = f"{pipeline} is made for frontal (PA/AP) chest radiographs"
    view = attributes.get("ViewPosition", "").strip().upper()
    if view in LATERAL_VIEWS:
        raise InputRefused(f"{made_for}; this image is a lateral view (ViewPosition {view})")
    if view in OBLIQUE_VIEWS:
        raise InputRefused(f"{made_for}; this image is an oblique view (ViewPosition {view})")
    orientation = attributes.get("PatientOrientation", "").strip().upper()
    row_direction = orientation.split("\\")[0] if orientation else ""
    if row_direction[:1] in ("A", "P"):
        raise InputRefused(
            f"{made_for}; this image is a lateral view (PatientOrientation {orientation}: "
            "its rows run anterior-posterior)"
        )


def to_unit(values: NDArray[np.floating], attributes: Mapping[str, str]) -> NDArray[np.float32]:
    """Window one image to 0..1 (bright = attenuating), MONOCHROME1 inverted.

    Parameters
    ----------
    values : ndarray, (rows, columns)
        Values after the modality LUT (rescale), as in a :class:`Volume`.
    attributes : mapping of str to str
        The volume's attributes: ``PhotometricInterpretation`` and, when
        present, ``WindowCenter``, ``WindowWidth``, ``VOILUTFunction``.

    Returns
    -------
    ndarray of float32, same shape, in 0..1
    """
    x = np.nan_to_num(np.asarray(values, dtype=np.float64))
    voi = _voi(attributes)
    if voi is None:
        stride = max(1, math.ceil(max(x.shape) / _PERCENTILE_SAMPLES))
        low, high = (float(v) for v in np.percentile(x[::stride, ::stride], PERCENTILE_WINDOW))
        high = max(high, low + 1e-6 * max(1.0, abs(low)))
        unit = (x - low) / (high - low)
    else:
        center, width, function = voi
        if function == "SIGMOID":
            unit = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700.0, 700.0)))
        elif function == "LINEAR_EXACT":
            unit = (x - center) / width + 0.5
        elif width <= 1.0:
            unit = (x > center - 0.5).astype(np.float64)
        else:
            unit = (x - (center - 0.5)) / (width - 1.0) + 0.5
    unit = np.clip(unit, 0.0, 1.0)
    if attributes.get("PhotometricInterpretation", "").strip().upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit.astype(np.float32)


def fit(
    image: NDArray[np.float32],
    grid_shape: tuple[int, int],
    spacing: tuple[float, float] = (1.0, 1.0),
) -> tuple[torch.Tensor, Placement]:
    """Scale ``image`` into ``grid_shape`` keeping its physical aspect, pad with zeros.

    Parameters
    ----------
    image : ndarray of float32, (rows, columns)
    grid_shape : (int, int)
        The network's input rows and columns.
    spacing : (float, float)
        Millimetres between rows and between columns.

    Returns
    -------
    tensor of float32, (grid rows, grid columns), and its :class:`Placement`
    """
    rows, columns = image.shape
    height, width = rows * spacing[0], columns * spacing[1]
    scale = min(grid_shape[0] / height, grid_shape[1] / width)
    content = (
        min(grid_shape[0], max(1, round(height * scale))),
        min(grid_shape[1], max(1, round(width * scale))),
    )
    top = (grid_shape[0] - content[0]) // 2
    left = (grid_shape[1] - content[1]) // 2
    source = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if content == (rows, columns):
        resized = source
    else:
        shrinking = content[0] < rows or content[1] < columns
        resized = F.interpolate(
            source, size=content, mode="bilinear", align_corners=False, antialias=shrinking
        )
    grid = torch.zeros(grid_shape, dtype=torch.float32)
    grid[top : top + content[0], left : left + content[1]] = resized[0, 0].clamp(0.0, 1.0)
    return grid, Placement((rows, columns), grid_shape, content, top, left)


def preprocess(volume: Volume, grid_shape: tuple[int, int]) -> tuple[torch.Tensor, Placement]:
    """The network input ``(1, grid rows, grid columns)`` of a one-slice volume.

    Does not check the view (call :func:`check_view`).
    """
    if volume.array.shape[0] != 1:
        raise InputRefused(
            f"cxr-classify takes one projection image, got {volume.array.shape[0]} slices"
        )
    unit = to_unit(volume.array[0], volume.attributes)
    grid, placement = fit(unit, grid_shape, (volume.spacing[1], volume.spacing[2]))
    return grid[None], placement


def _voi(attributes: Mapping[str, str]) -> tuple[float, float, str] | None:
    center = _first_number(attributes.get("WindowCenter"))
    width = _first_number(attributes.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = (attributes.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if width <= 0.0 or (function == "LINEAR" and width < 1.0):
        return None
    return center, width, function


def _first_number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        number = float(text.split("\\")[0])
    except ValueError:
        return None
    return number if math.isfinite(number) else None
