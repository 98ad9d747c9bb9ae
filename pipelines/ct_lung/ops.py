"""Binary-mask operations on torch tensors, on whatever device the tensor lives.

Morphology is a separable box filter made of shifted boolean ORs/ANDs: it runs
on the mask's own device and costs a few passes over the mask. (MONAI's
``dilate``/``erode`` in ``monai.transforms.utils_morphological_ops`` compute a
float ``conv3d`` instead, about 90 times slower on a CPU for a 256x512x512
mask: 7 s against 0.08 s for a 3x3x3 box.)

Connected-component labelling has no torch implementation: :func:`label`
copies the mask to the CPU, labels it with ``scipy.ndimage.label`` and moves
the labels back to the mask's device. The largest-component step of the
pipeline goes through MONAI instead
(:func:`monai.transforms.utils.get_largest_connected_component_mask`), which
uses cuCIM on a GPU when cuCIM is installed and scikit-image on the CPU
otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage  # type: ignore[import-untyped]

__all__ = [
    "IN_PLANE",
    "VOLUME_6",
    "box_dilate",
    "box_erode",
    "component_sums",
    "fill_holes_per_slice",
    "label",
    "touches_in_plane_border",
]

VOLUME_6 = ndimage.generate_binary_structure(3, 1)
"""Face connectivity in 3-D (6 neighbours)."""

IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
"""Edge connectivity within each slice (4 neighbours), none across slices."""


def label(mask: torch.Tensor, structure: NDArray[np.bool_]) -> tuple[torch.Tensor, int]:
    """Label the connected components of a 3-D boolean mask.

    Runs on the CPU (``scipy.ndimage.label``) whatever the mask's device.

    Parameters
    ----------
    mask : Tensor of bool, (slices, rows, columns)
    structure : ndarray of bool, (3, 3, 3)
        The neighbourhood, e.g. :data:`VOLUME_6` or :data:`IN_PLANE`.

    Returns
    -------
    labels : Tensor of int32 on the mask's device
        0 outside the mask, 1..count inside.
    count : int
        The number of components.
    """
    labels, count = ndimage.label(mask.cpu().numpy(), structure=structure)
    return torch.from_numpy(labels.astype(np.int32, copy=False)).to(mask.device), int(count)


def component_sums(
    labels: torch.Tensor, count: int, values: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-component sum of ``values`` (or voxel count without), index 0 = background.

    Parameters
    ----------
    labels : Tensor of int
        From :func:`label`.
    count : int
        The number of components.
    values : Tensor, optional
        Same shape as ``labels``; bool (counts the true voxels exactly) or
        float (summed in float64).

    Returns
    -------
    Tensor of float64, (count + 1,)
    """
    flat = labels.reshape(-1)
    if values is None:
        counts = torch.bincount(flat, minlength=count + 1)
    elif values.dtype == torch.bool:
        counts = torch.bincount(flat[values.reshape(-1)], minlength=count + 1)
    else:
        weights = values.reshape(-1).to(torch.float64)
        counts = torch.bincount(flat, weights=weights, minlength=count + 1)
    return counts.to(torch.float64)


def touches_in_plane_border(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Which components reach the edge of an image (the first/last row or column).

    Returns
    -------
    Tensor of bool, (count + 1,)
    """
    touches = torch.zeros(count + 1, dtype=torch.bool, device=labels.device)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        touches[edge.reshape(-1).long()] = True
    return touches


def fill_holes_per_slice(mask: torch.Tensor, max_hole_voxels: int | None = None) -> torch.Tensor:
    """Fill the holes of a mask in each slice separately.

    A hole is a background region of one slice (4-connected) that does not
    reach the edge of the image. Filling slice by slice keeps a structure cut
    by the first or last slice of the scan (a lung cut by the scan range)
    from counting as open.

    Parameters
    ----------
    mask : Tensor of bool, (slices, rows, columns)
    max_hole_voxels : int, optional
        Holes larger than this stay open.

    Returns
    -------
    Tensor of bool on the mask's device
    """
    labels, count = label(~mask, IN_PLANE)
    if count == 0:
        return mask.clone()
    fill = ~touches_in_plane_border(labels, count)
    if max_hole_voxels is not None:
        fill &= component_sums(labels, count) <= max_hole_voxels
    fill[0] = False
    return mask | fill[labels.long()]


def box_dilate(mask: torch.Tensor, radius: Sequence[int]) -> torch.Tensor:
    """Dilate a boolean mask by a box of half-widths ``radius`` (one per axis).

    Voxels beyond the array count as background.
    """
    out = mask
    for axis, steps in enumerate(radius):
        out = _shift_reduce(out, axis, steps, union=True)
    return out


def box_erode(mask: torch.Tensor, radius: Sequence[int]) -> torch.Tensor:
    """Erode a boolean mask by a box of half-widths ``radius`` (one per axis).

    Voxels beyond the array count as foreground, so a mask touching the
    array's edge is not eaten from there (as MONAI's ``erode`` pads with 1).
    """
    out = mask
    for axis, steps in enumerate(radius):
        out = _shift_reduce(out, axis, steps, union=False)
    return out


def _shift_reduce(mask: torch.Tensor, axis: int, steps: int, *, union: bool) -> torch.Tensor:
    """OR (``union``) or AND of ``mask`` shifted by -steps..steps along ``axis``."""
    size = mask.shape[axis]
    steps = min(steps, size - 1)
    if steps <= 0:
        return mask
    reduce = torch.logical_or if union else torch.logical_and
    result = mask.clone()
    for step in range(1, steps + 1):
        head = result.narrow(axis, step, size - step)
        reduce(head, mask.narrow(axis, 0, size - step), out=head)
        tail = result.narrow(axis, 0, size - step)
        reduce(tail, mask.narrow(axis, step, size - step), out=tail)
    return result
