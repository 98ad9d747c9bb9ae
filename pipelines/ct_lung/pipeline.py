"""The ``ct-lung`` pipeline: body, lungs and airways of a chest CT, with lung volumetry.

A classical pipeline without weights (see :mod:`.segment` for the method). It
refuses, with a ``ValueError`` naming the reason, volumes it was not made
for: another modality, values that are not Hounsfield units, geometry the
loader had to guess.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from dicomnode.protocol import (
    MORPHOLOGICAL_OPERATIONS_CODE,
    Algorithm,
    InputRefused,
    InputSpec,
    Measurement,
    PipelineResult,
    Volume,
)

from .codes import (
    AIRWAY,
    ATTENUATION_COEFFICIENT,
    HOUNSFIELD_UNIT,
    LAA_950,
    LEFT_LUNG,
    LUNG_LABELS,
    MILLILITER,
    PERCENT,
    RIGHT_LUNG,
    SEGMENTS,
    VOLUME,
)
from .segment import Geometry, Segmentation, Settings, segment

__all__ = ["CHEST_BODY_PARTS", "EMPHYSEMA_HU", "INPUT", "CTLungPipeline", "check_input"]

LOGGER = logging.getLogger(__name__)

EMPHYSEMA_HU = -950.0
"""Threshold of the low-attenuation area (%LAA-950)."""

_HU_FLOOR = -1024.0  # air; lower values are padding or lossy-compression overshoot
_MIN_IMAGE_SIZE = 16


CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "TORAX", "LUNG", "TORSO", "WHOLEBODY"})
"""Body Part Examined terms of a CT that holds the chest (``CHESTABDPELVIS``,
``THORAX_ROUTINE`` and the like contain one)."""

INPUT = InputSpec(
    modalities=frozenset({"CT"}),
    # fewer slices are a scout, one level or a few slabs: nothing to measure in mL
    min_slices=16,
    # an adult chest is 250-400 mm wide: smaller images are a zoomed part of it
    # (one lung, a vertebra) or no chest at all; larger ones are not a CT
    field_of_view_mm=(200.0, 800.0),
    # coarser pixels cannot outline the lungs and airways
    pixel_spacing_mm=(0.2, 8.0),
    # thicker or sparser slices are not a volume to measure
    slice_spacing_mm=(0.3, 10.0),
    body_parts=CHEST_BODY_PARTS,
)
"""The input contract of ``ct-lung``: a CT of a whole adult chest."""


class CTLungPipeline:
    """Segment body, right and left lung and airways of a CT; measure the lungs.

    Labels: 1 body, 2 right lung, 3 left lung, 4 airways (trachea and
    bronchi, when found). Measurements per lung and for both lungs: volume
    (mL), mean lung density (HU) and %LAA-950 (percent of lung volume below
    -950 HU).

    Its input contract (:data:`INPUT`, checked by the runner before
    :meth:`run`): a CT of 16 or more slices, 0.3 to 10 mm apart, with pixels of
    0.2 to 8 mm and a field of view of 200 to 800 mm across, whose Body Part
    Examined (when the header gives one) names the chest.

    Parameters
    ----------
    settings : Settings, optional
        Thresholds of the segmentation; the defaults suit adult chest CT.
    """

    name: str = "ct-lung"
    version: str = "1.0.0"
    input: InputSpec = INPUT
    #: thresholds, connected components and morphology: no trained model
    algorithm: Algorithm = Algorithm(family=MORPHOLOGICAL_OPERATIONS_CODE, trained_model=False)

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()

    def load(self, device: str) -> None:
        """Nothing to load (no weights); checks that ``device`` names a torch device."""
        torch.device(device)

    def run(self, volume: Volume, device: str) -> PipelineResult:
        """Segment ``volume`` on ``device`` and measure the lungs.

        Parameters
        ----------
        volume : Volume
            A CT volume in Hounsfield units.
        device : str
            ``"cpu"`` or ``"cuda:N"``; thresholds and morphology run there,
            connected-component labelling on the CPU (or cuCIM, for the body).

        Returns
        -------
        PipelineResult
            ``label_map`` in the volume's grid, segments of the labels present,
            measurements, summary.

        Raises
        ------
        ValueError
            If the volume is not one this pipeline was made for
            (:func:`check_input`).
        """
        check_input(volume)
        array = np.ascontiguousarray(volume.array, dtype=np.float32)
        with torch.inference_mode():
            hu = torch.as_tensor(array, device=torch.device(device))
            found = segment(hu, Geometry.of(volume), self.settings)
            measurements = _measure(hu, found.labels, volume.voxel_volume_ml)
            voxels = torch.bincount(found.labels.reshape(-1), minlength=len(SEGMENTS) + 1)
            present = [value for value in SEGMENTS if int(voxels[value]) > 0]
            label_map = found.labels.cpu().numpy()
        return PipelineResult(
            label_map=label_map,
            segments=tuple(SEGMENTS[value] for value in present),
            measurements=tuple(measurements),
            models=(),
            summary=_summary(measurements, found, present),
        )


def check_input(volume: Volume) -> None:
    """Refuse a volume ``ct-lung`` was not made for.

    Raises
    ------
    ValueError
        If the modality is not CT, the image is too small to hold a chest,
        the pixel or slice spacing was unknown to the loader (volumes in mL
        would be wrong), or the values are not Hounsfield units (not finite,
        nothing as low as fat or air, or mostly denser than bone).
    """
    if volume.modality.upper() != "CT":
        raise InputRefused(f"ct-lung needs a CT volume, got modality {volume.modality!r}")
    rows, columns = volume.array.shape[1:]
    if min(rows, columns) < _MIN_IMAGE_SIZE:
        raise InputRefused(f"ct-lung needs images of at least 16x16 pixels, got {rows}x{columns}")
    for key in ("PixelSpacingSource", "SliceSpacingSource"):
        if volume.attributes.get(key) == "none":
            raise InputRefused(
                f"ct-lung measures volumes in mL and needs known spacing; {key} is 'none'"
            )
    lowest, highest = float(volume.array.min()), float(volume.array.max())
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        raise InputRefused("ct-lung needs finite values; the volume holds NaN or infinity")
    if lowest > -100.0:
        raise InputRefused(
            f"values do not look like Hounsfield units: the lowest is {lowest:g}, but a CT in HU "
            "holds air (-1000 HU) or at least fat (-100 HU); was the rescale slope and "
            "intercept applied?"
        )
    sample = volume.array[:: max(1, volume.array.shape[0] // 32), ::4, ::4]
    median = float(np.median(sample))
    if median > 2000.0:
        raise InputRefused(
            f"values do not look like Hounsfield units: the median is {median:g}, denser than bone"
        )


def _measure(hu: torch.Tensor, labels: torch.Tensor, voxel_ml: float) -> list[Measurement]:
    measurements: list[Measurement] = []
    total_voxels = 0
    total_sum = 0.0
    total_low = 0
    for value in LUNG_LABELS:
        lung = hu[labels == value].clamp(min=_HU_FLOOR).double()
        voxels = int(lung.numel())
        if voxels == 0:
            continue
        low = int((lung < EMPHYSEMA_HU).sum())
        density = float(lung.sum())
        total_voxels += voxels
        total_sum += density
        total_low += low
        measurements += _lung_measurements(voxels, density, low, voxel_ml, value)
    if total_voxels:
        measurements += _lung_measurements(total_voxels, total_sum, total_low, voxel_ml, None)
    return measurements


def _lung_measurements(
    voxels: int, hu_sum: float, low: int, voxel_ml: float, label: int | None
) -> list[Measurement]:
    return [
        Measurement(VOLUME, voxels * voxel_ml, MILLILITER, label),
        Measurement(ATTENUATION_COEFFICIENT, hu_sum / voxels, HOUNSFIELD_UNIT, label),
        Measurement(LAA_950, 100.0 * low / voxels, PERCENT, label),
    ]


def _summary(measurements: list[Measurement], found: Segmentation, present: list[int]) -> str:
    if not present:
        return "No body found in the volume."
    if not measurements:
        return "Body segmented; no lungs found in the imaged range."
    by_lung: dict[int | None, dict[str, float]] = {}
    for item in measurements:
        by_lung.setdefault(item.segment_label, {})[item.concept.value] = item.value
    parts = []
    for value, name in ((RIGHT_LUNG, "Right lung"), (LEFT_LUNG, "left lung")):
        if value in by_lung:
            lung = by_lung[value]
            parts.append(
                f"{name} {lung[VOLUME.value]:.0f} mL "
                f"(mean {lung[ATTENUATION_COEFFICIENT.value]:.0f} HU, "
                f"LAA-950 {lung[LAA_950.value]:.1f} %)"
            )
        else:
            parts.append(f"{name} not found")
    both = by_lung[None]
    text = (
        f"{parts[0]}, {parts[1]}; both lungs {both[VOLUME.value]:.0f} mL, "
        f"LAA-950 {both[LAA_950.value]:.1f} %."
    )
    if AIRWAY in present:
        text += " Trachea and central bronchi are excluded from the lungs."
    if found.lungs_truncated:
        text += " The lungs reach the edge of the image; volumes cover the imaged part only."
    return text
