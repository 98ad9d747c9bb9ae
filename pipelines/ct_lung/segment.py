"""Classical body, lung and airway segmentation of a CT volume in Hounsfield units.

No weights: thresholds, connected components and a little morphology, all on
torch tensors on the caller's device. The steps:

1. **Body.** Voxels above :attr:`Settings.body_hu`, the largest 3-D connected
   component (MONAI's ``get_largest_connected_component_mask``; this drops
   the table, cushions and noise), with the background regions it encloses
   filled slice by slice. A background region that reaches the edge of an
   image is outside air, unless it looks like lung rather than air (most of
   it below :attr:`Settings.lung_hu` and at most half of that below
   :attr:`Settings.air_hu`): that is a lung cut by a small field of view,
   as in a zoomed reconstruction.
2. **Lung candidates.** Air-like voxels (below :attr:`Settings.lung_hu`)
   inside the body, as 3-D components. A component is lung when it holds at
   least :attr:`Settings.min_lung_fraction` of the body volume and its mean
   is at least :attr:`Settings.min_lung_mean_hu`: pure gas (stomach, bowel,
   an isolated trachea) has a mean near -1000 HU, aerated lung near -850 HU.
   A small air-filled cavity (a paranasal sinus) can reach a lung-like mean
   through its partial-volume rim, so a component below
   :attr:`Settings.cavity_max_fraction` of the body whose core (the
   component eroded in-plane by :attr:`Settings.cavity_core_mm`) is mostly
   pure air is left out too; large components are kept whatever their core,
   so that severely emphysematous lungs are not mistaken for gas. The kept
   components are closed in-plane by a small box
   (:attr:`Settings.closing_mm`) and their holes up to
   :attr:`Settings.max_hole_mm2` (vessels, small nodules) filled, slice by
   slice, so that a lung cut by the scan range is not grown at the cut.
3. **Airways.** On axial stacks, pure-air voxels (below
   :attr:`Settings.air_hu`) of the lung region near the body's midline in the
   most cranial slices seed the trachea; the pure-air component holding the
   seeds, widened by :attr:`Settings.airway_wall_mm` in-plane to take the
   partial-volume rim, becomes the airway label. If that component is too
   large to be airways (it leaked into emphysematous lung), a stricter
   threshold is tried and then the step is skipped; if it is too short to be
   a trachea (:attr:`Settings.airway_min_length_mm`), it is skipped too.
4. **Right and left.** The split plane is perpendicular to the patient's
   left-right axis (patient x, from the volume's direction cosines, so it
   holds for any in-plane orientation) at the thinnest part of the lung
   profile near the body's midline. A lung component lying at least
   :attr:`Settings.side_majority` on one side goes to that side whole; one
   straddling the plane (lungs touching at the anterior junction, or joined
   by the airways) is cut by it. Patient right is negative x.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.transforms.utils import get_largest_connected_component_mask

from dicomnode.protocol import Vector3, Volume

from .codes import AIRWAY, BODY, LEFT_LUNG, RIGHT_LUNG
from .ops import (
    IN_PLANE,
    VOLUME_6,
    box_dilate,
    box_erode,
    component_sums,
    fill_holes_per_slice,
    label,
    touches_in_plane_border,
)

__all__ = ["Geometry", "Segmentation", "Settings", "segment"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Thresholds of the segmentation (HU, mm, fractions)."""

    body_hu: float = -500.0
    """Tissue: above this is body."""
    lung_hu: float = -400.0
    """Air-like: below this is lung or gas."""
    air_hu: float = -950.0
    """Pure air: below this is outside air, gas or airway lumen."""
    min_lung_fraction: float = 0.02
    """A lung component holds at least this fraction of the body volume."""
    min_lung_mean_hu: float = -950.0
    """A lung component's mean HU is at least this (pure gas is lower)."""
    cavity_core_mm: float = 2.0
    """In-plane erosion giving a component's core, without its partial-volume rim."""
    cavity_max_fraction: float = 0.05
    """A component smaller than this fraction of the body whose core is mostly
    pure air (median below :attr:`air_hu`) is a gas-filled cavity, not lung."""
    closing_mm: float = 2.0
    """In-plane half-width of the box closing the lung mask."""
    max_hole_mm2: float = 500.0
    """Largest in-plane hole of the lung mask filled as lung (vessels, nodules)."""
    airway_seed_mm: float = 25.0
    """Airway seeds lie within this distance of the body's midline."""
    airway_seed_depth_mm: float = 10.0
    """Airway seeds lie within this distance of the cranial end of the lungs."""
    airway_min_length_mm: float = 30.0
    """An airway tree spans at least this many millimetres from head to feet."""
    airway_max_ml: float = 300.0
    """An airway tree larger than this has leaked into the lung."""
    airway_max_fraction: float = 0.15
    """An airway tree larger than this fraction of the lung region has leaked."""
    airway_wall_mm: float = 1.5
    """In-plane widening of the airway lumen to take its partial-volume rim."""
    min_fragment_fraction: float = 0.01
    """Lung pieces smaller than this fraction of the lungs are left to the body."""
    midline_window: float = 0.15
    """The split plane lies within this fraction of the body's width of its centre."""
    side_majority: float = 0.9
    """A lung component this much on one side of the plane goes there whole."""


@dataclass(frozen=True)
class Geometry:
    """Where voxels are in patient coordinates (LPS, mm)."""

    spacing: Vector3
    origin: Vector3
    row_direction: Vector3
    column_direction: Vector3
    slice_direction: Vector3

    @classmethod
    def of(cls, volume: Volume) -> Geometry:
        """The geometry of a :class:`~dicomnode.protocol.Volume`."""
        return cls(
            volume.spacing,
            volume.origin,
            volume.row_direction,
            volume.column_direction,
            volume.slice_direction,
        )

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return math.prod(self.spacing) / 1000.0

    def steps(self, axis: int) -> Vector3:
        """Change of patient coordinate ``axis`` (mm) per slice, row and column step."""
        return (
            self.slice_direction[axis] * self.spacing[0],
            self.column_direction[axis] * self.spacing[1],
            self.row_direction[axis] * self.spacing[2],
        )

    def patient_coordinate(
        self, axis: int, shape: Sequence[int], device: torch.device
    ) -> torch.Tensor:
        """Patient coordinate ``axis`` (0 = x, 1 = y, 2 = z) of every voxel, float32.

        ``shape`` is the volume's ``(slices, rows, columns)``.
        """
        steps = self.steps(axis)
        ramps = [
            torch.arange(size, device=device, dtype=torch.float32) * step
            for size, step in zip(shape, steps, strict=True)
        ]
        return (
            self.origin[axis]
            + ramps[0][:, None, None]
            + ramps[1][None, :, None]
            + ramps[2][None, None, :]
        )


@dataclass(frozen=True)
class Segmentation:
    """What :func:`segment` found.

    Attributes
    ----------
    labels : Tensor of uint8, (slices, rows, columns)
        0 outside the body, then the label values of :mod:`.codes`.
    airway_found : bool
        Whether the airway step found a trachea.
    lungs_truncated : bool
        Whether a lung reaches the edge of the volume (cut by the scan range
        or the field of view), so its volume is that of the imaged part.
    """

    labels: torch.Tensor
    airway_found: bool
    lungs_truncated: bool


def segment(hu: torch.Tensor, geometry: Geometry, settings: Settings | None = None) -> Segmentation:
    """Segment body, lungs and airways.

    Parameters
    ----------
    hu : Tensor of float32, (slices, rows, columns)
        Hounsfield units, on the device to work on.
    geometry : Geometry
        Spacing and direction cosines of ``hu``.
    settings : Settings, optional
        Thresholds; the defaults suit adult chest CT.

    Returns
    -------
    Segmentation
        Label map on ``hu``'s device.
    """
    settings = settings or Settings()
    labels = torch.zeros(hu.shape, dtype=torch.uint8, device=hu.device)
    body = _body(hu, settings)
    if not bool(body.any()):
        return Segmentation(labels, airway_found=False, lungs_truncated=False)
    labels[body] = BODY
    lungs = _lung_region(hu, body, geometry, settings)
    if lungs is None:
        return Segmentation(labels, airway_found=False, lungs_truncated=False)
    x = geometry.patient_coordinate(0, hu.shape, hu.device)
    airway = _airway(hu, lungs, body, x, geometry, settings)
    if airway is not None:
        lungs &= ~airway
        labels[airway] = AIRWAY
    right, left = _split(lungs, body, x, geometry, settings)
    labels[right] = RIGHT_LUNG
    labels[left] = LEFT_LUNG
    return Segmentation(
        labels, airway_found=airway is not None, lungs_truncated=_touches_edge(right | left)
    )


def _body(hu: torch.Tensor, settings: Settings) -> torch.Tensor:
    dense = hu > settings.body_hu
    if not bool(dense.any()):
        return dense
    core: torch.Tensor = get_largest_connected_component_mask(dense, connectivity=1)
    core = core.to(device=hu.device, dtype=torch.bool)
    outside, count = label(~core, IN_PLANE)
    if count == 0:
        return core
    size = component_sums(outside, count)
    air = component_sums(outside, count, hu < settings.lung_hu)
    pure = component_sums(outside, count, hu < settings.air_hu)
    lung_like = (air > 0) & (air >= 0.5 * size) & (pure <= 0.5 * air)
    enclosed = ~touches_in_plane_border(outside, count) | lung_like
    enclosed[0] = False
    return core | enclosed[outside]


def _lung_region(
    hu: torch.Tensor, body: torch.Tensor, geometry: Geometry, settings: Settings
) -> torch.Tensor | None:
    candidates, count = label(body & (hu < settings.lung_hu), VOLUME_6)
    if count == 0:
        return None
    air = candidates > 0
    size = component_sums(candidates, count)
    mean = component_sums(candidates, count, hu) / size.clamp(min=1.0)
    core_radius = _radius(settings.cavity_core_mm, geometry.spacing, minimum=1)
    core = box_erode(air, (0, core_radius[1], core_radius[2]))
    core_size = component_sums(candidates, count, core)
    core_gas = component_sums(candidates, count, core & (hu < settings.air_hu))
    body_voxels = float(body.sum())
    cavity = (core_gas > 0.5 * core_size) & (size < settings.cavity_max_fraction * body_voxels)
    keep = (
        (size >= settings.min_lung_fraction * body_voxels)
        & (mean >= settings.min_lung_mean_hu)
        & ~cavity
    )
    keep[0] = False
    LOGGER.debug(
        "ct-lung: %d air components inside the body, %d kept as lung", count, int(keep.sum())
    )
    if not bool(keep.any()):
        return None
    region = keep[candidates]
    _, row_radius, column_radius = _radius(settings.closing_mm, geometry.spacing)
    in_plane = (0, row_radius, column_radius)  # in-plane: a lung cut by the scan range stays cut
    region = box_erode(box_dilate(region, in_plane), in_plane) & body
    hole = settings.max_hole_mm2 / (geometry.spacing[1] * geometry.spacing[2])
    return fill_holes_per_slice(region, max_hole_voxels=int(hole)) & body


def _airway(
    hu: torch.Tensor,
    lungs: torch.Tensor,
    body: torch.Tensor,
    x: torch.Tensor,
    geometry: Geometry,
    settings: Settings,
) -> torch.Tensor | None:
    cranial = geometry.slice_direction[2]
    if abs(cranial) < 0.7 or hu.shape[0] < 3:
        return None  # not an axial stack: no "top slice" to find the trachea in
    occupied = torch.nonzero(lungs.reshape(lungs.shape[0], -1).any(dim=1)).reshape(-1)
    depth = max(1, round(settings.airway_seed_depth_mm / geometry.spacing[0]))
    if cranial > 0:
        top = int(occupied.max())
        slab = slice(max(0, top - depth + 1), top + 1)
    else:
        top = int(occupied.min())
        slab = slice(top, top + depth)
    top_x = x[slab]
    midline = float(top_x[body[slab]].mean())
    near_midline = (top_x - midline).abs() <= settings.airway_seed_mm
    lung_voxels = float(lungs.sum())
    for threshold in (settings.air_hu, settings.air_hu - 30.0):
        pure = lungs & (hu < threshold)
        seeds = pure[slab] & near_midline
        if not bool(seeds.any()):
            return None
        components, count = label(pure, VOLUME_6)
        chosen = torch.zeros(count + 1, dtype=torch.bool, device=hu.device)
        chosen[components[slab][seeds].long()] = True
        chosen[0] = False
        tree = chosen[components]
        voxels = float(tree.sum())
        if (
            voxels * geometry.voxel_volume_ml <= settings.airway_max_ml
            and voxels <= settings.airway_max_fraction * lung_voxels
        ):
            length = int(tree.reshape(tree.shape[0], -1).any(dim=1).sum()) * geometry.spacing[0]
            if length < settings.airway_min_length_mm:
                LOGGER.debug("ct-lung: %.0f mm of air near the midline is no trachea", length)
                return None
            wall = _radius(settings.airway_wall_mm, geometry.spacing, minimum=1)
            return box_dilate(tree, (0, wall[1], wall[2])) & lungs
        LOGGER.debug(
            "ct-lung: airway below %.0f HU leaks (%.0f mL); trying stricter",
            threshold,
            voxels * geometry.voxel_volume_ml,
        )
    LOGGER.info("ct-lung: no airway tree without leaking into the lungs; airways stay in lungs")
    return None


def _split(
    lungs: torch.Tensor,
    body: torch.Tensor,
    x: torch.Tensor,
    geometry: Geometry,
    settings: Settings,
) -> tuple[torch.Tensor, torch.Tensor]:
    components, count = label(lungs, VOLUME_6)
    if count == 0:
        return lungs, lungs
    bin_mm = max(0.5, *(abs(step) for step in geometry.steps(0)))
    plane = _split_plane(x, lungs, body, bin_mm, settings)
    right_side = x < plane
    size = component_sums(components, count)
    on_right = component_sums(components, count, right_side) / size.clamp(min=1.0)
    keep = size >= settings.min_fragment_fraction * float(size[1:].sum())
    keep[0] = False
    whole_right = keep & (on_right >= settings.side_majority)
    whole_left = keep & (on_right <= 1.0 - settings.side_majority)
    straddling = (keep & ~whole_right & ~whole_left)[components]
    right = whole_right[components] | (straddling & right_side)
    left = whole_left[components] | (straddling & ~right_side)
    return right, left


def _split_plane(
    x: torch.Tensor, lungs: torch.Tensor, body: torch.Tensor, bin_mm: float, settings: Settings
) -> float:
    """Patient x (mm) of the plane between the lungs.

    The lung profile along x is counted in bins of ``bin_mm`` (the largest
    step of x between neighbouring voxels, so no bin falls between two
    columns of voxels), centred on the lowest voxel, and smoothed over three
    bins; the plane goes through the middle of the lowest bins near the
    body's centre.
    """
    body_x = x[body]
    centre = float(body_x.mean())
    half_window = settings.midline_window * float(body_x.max() - body_x.min())
    lung_x = x[lungs]
    low = float(lung_x.min()) - bin_mm / 2.0
    bins = math.floor((float(lung_x.max()) - low) / bin_mm) + 1
    profile = torch.histc(lung_x, bins=bins, min=low, max=low + bins * bin_mm)
    profile = torch.nn.functional.avg_pool1d(profile[None, None], 3, 1, 1, count_include_pad=False)
    profile = profile.reshape(-1)
    centres = low + (torch.arange(bins, device=x.device, dtype=torch.float32) + 0.5) * bin_mm
    window = (centres - centre).abs() <= half_window
    if not bool(window.any()):
        return centre
    lowest = profile[window] <= profile[window].min() * (1.0 + 1e-6)
    return float(centres[window][lowest].mean())


def _radius(mm: float, spacing: Vector3, minimum: int = 0) -> tuple[int, int, int]:
    return (
        max(minimum, round(mm / spacing[0])),
        max(minimum, round(mm / spacing[1])),
        max(minimum, round(mm / spacing[2])),
    )


def _touches_edge(mask: torch.Tensor) -> bool:
    faces = (mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1])
    return any(bool(face.any()) for face in faces)
