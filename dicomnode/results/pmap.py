"""Heatmaps as DICOM Parametric Maps, with highdicom.

The burned-in overlays of :mod:`.overlay` are for every viewer's eyes; the
Parametric Map carries the heatmap's values themselves, the encoding the IHE
AI Results profile prefers: a viewer that shows parametric maps lays it over
the source in colour, and software can read the numbers back.

Each heatmap of a :class:`~dicomnode.protocol.PipelineResult` becomes one
Parametric Map (:class:`highdicom.pm.ParametricMap`) in a series of its own:

* **Values**: the heat as 32-bit float (Float Pixel Data), clipped to 0..1
  (NaN as 0), uncompressed (the standard defines no compression for float
  pixel data). A Real World Value Mapping says what they are: an identity
  mapping (slope 1, intercept 0) over 0..1 in UCUM ``1`` ("no units"), labelled
  ``HEAT`` and explained as the finding's heat.
* **Frames**: the slices of the heatmap that get an overlay
  (:func:`~dicomnode.results.overlay.select_slices`), each referencing its
  source image, or every frame of a multi-frame source; a heatmap without
  heat gives no map.
* **Window**: center 0.5, width 1, the whole range.
* **Sources without a frame of reference** (projection radiographs: DX, CR
  and the like) get no map: the Parametric Map IOD requires a Frame of
  Reference and plane position and orientation for every frame, which such
  images do not have. Their heatmaps travel as overlays only.
* **Identity**: study, patient and study attributes of the source
  (:func:`~dicomnode.results.common.copy_patient_and_study`, as in every
  other object of the result); the series and instance UIDs derive from the
  source series, the pipeline name and version, ``"pmap"`` and the finding's
  code (:func:`map_series_uid`), so a re-run replaces the map. The Series
  Description says what it is: ``AI heatmap map Nodule (cxr-classify 1.0)``
  ("Automated" instead of "AI" when the pipeline runs no trained model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from dicomnode.protocol import Code, Heatmap, PipelineResult, ResultContext, Volume

from .common import (
    MANUFACTURER,
    check_sources,
    code_string,
    copy_identity,
    limit,
    series_laterality,
    specific_character_set,
)
from .overlay import select_slices
from .uids import derived_uid

__all__ = ["HEAT_UNIT", "build_parametric_maps", "map_series_uid"]

LOGGER = logging.getLogger(__name__)

HEAT_UNIT = hd.sr.CodedConcept("1", "UCUM", "no units")
"""Unit of the heat values (a number from 0 to 1)."""


def map_series_uid(volume: Volume, context: ResultContext, finding: Code) -> str:
    """Series Instance UID of the Parametric Map of ``finding``'s heatmap."""
    return derived_uid(
        volume.series_instance_uid,
        context.pipeline_name,
        context.pipeline_version,
        "pmap",
        finding.scheme,
        finding.value,
    )


def build_parametric_maps(
    result: PipelineResult,
    volume: Volume,
    sources: Sequence[Dataset],
    context: ResultContext,
    *,
    series_number: int = 9004,
    series_number_step: int = 1,
) -> list[Dataset]:
    """Build one Parametric Map per heatmap of ``result`` that has heat.

    Parameters
    ----------
    result : PipelineResult
        Its ``heatmaps`` (in ``volume``'s grid).
    volume : Volume
        The volume the pipeline ran on.
    sources : sequence of Dataset
        The source datasets in volume order (a multi-frame source repeats).
    context : ResultContext
        Pipeline name and version, the node's name, the algorithm's label.
    series_number : int
        Series Number of the map of ``result.heatmaps[0]``; the map of
        ``result.heatmaps[i]`` has ``series_number + i * series_number_step``.
    series_number_step : int
        See ``series_number``.

    Returns
    -------
    list of Dataset
        :class:`highdicom.pm.ParametricMap` objects, not yet written, in the
        order of ``result.heatmaps``.

    Raises
    ------
    ValueError
        If a heatmap is not in the volume's grid, the sources do not match
        ``volume.sources``, or highdicom refuses the inputs.
    """
    if not result.heatmaps:
        return []
    result.check_grid(volume)
    check_sources(volume, sources)
    maps: list[Dataset] = []
    for position, heatmap in enumerate(result.heatmaps):
        pm = _parametric_map(
            heatmap,
            volume,
            sources,
            context,
            series_number=series_number + position * series_number_step,
        )
        if pm is not None:
            maps.append(pm)
    return maps


def _parametric_map(
    heatmap: Heatmap,
    volume: Volume,
    sources: Sequence[Dataset],
    context: ResultContext,
    *,
    series_number: int,
) -> Dataset | None:
    if not volume.frame_of_reference_uid:
        LOGGER.debug(
            "no parametric map of %s: the source has no frame of reference",
            heatmap.finding.meaning,
        )
        return None
    heat = np.clip(np.nan_to_num(np.asarray(heatmap.array, dtype=np.float32)), 0.0, 1.0)
    slices = select_slices(heat)
    if not slices:
        LOGGER.debug("heatmap of %s has no heat; no parametric map", heatmap.finding.meaning)
        return None
    images, pixels = _images_and_frames(volume, sources, heat, slices)
    finding = heatmap.finding
    label = context.algorithm.label
    pipeline = f"{context.pipeline_name} {context.pipeline_version}"
    description = limit(f"{label} heatmap map {finding.meaning} ({pipeline})")
    explanation = limit(f"{label} heat of {finding.meaning}, 0 to 1")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="HEAT",
        lut_explanation=explanation,
        unit=HEAT_UNIT,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    series_uid = map_series_uid(volume, context, finding)
    texts = [description, explanation, context.pipeline_name, context.pipeline_version]
    pm = hd.pm.ParametricMap(
        source_images=images,
        pixel_array=pixels,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=derived_uid(series_uid, "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=limit(context.pipeline_name),
        software_versions=limit(context.pipeline_version),
        device_serial_number=limit(context.node_name),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label=code_string("HEATMAP"),
        content_description=limit(f"{label} heatmap of {finding.meaning} by {pipeline}"),
        series_description=description,
        specific_character_set=specific_character_set(images[0], texts),
    )
    copy_identity(images[0], pm)
    body_part = str(images[0].get("BodyPartExamined", "") or "").strip()
    if body_part:
        pm.BodyPartExamined = body_part
    laterality = series_laterality(images[0])
    if laterality is not None:
        pm.Laterality = laterality
    return pm


def _images_and_frames(
    volume: Volume,
    sources: Sequence[Dataset],
    heat: NDArray[np.float32],
    slices: list[int],
) -> tuple[list[Dataset], NDArray[Any]]:
    """The source images and the frames of the map: the chosen slices of
    single-frame sources, or every frame of one multi-frame source (frames
    the volume does not hold, and slices without heat, stay 0)."""
    if all(s.frame_number is None for s in volume.sources):
        return [sources[i] for i in slices], heat[slices]
    uids = {s.sop_instance_uid for s in volume.sources}
    if len(uids) != 1 or any(s.frame_number is None for s in volume.sources):
        raise ValueError(
            "a parametric map references either single-frame source images or the "
            f"frames of one multi-frame image; the volume's slices come from {len(uids)}"
        )
    image = sources[0]
    frames = np.zeros((int(image.get("NumberOfFrames", 1)), *heat.shape[1:]), dtype=np.float32)
    for index in slices:
        number = int(volume.sources[index].frame_number or 0)
        frames[number - 1] = heat[index]
    return [image], frames
