"""DICOM Segmentation (BINARY) of a pipeline's label map, with highdicom.

One segment per :class:`~dicomnode.protocol.Segment` of the result, in the
order of ``result.segments`` (segment number 1, 2, ...; see
:func:`~dicomnode.results.common.segment_numbers`). Frames lie in the
source geometry and reference their source instance (and frame), so a viewer
lays each one over its source slice; frames without any pixel of a segment are
left out, and highdicom records for every frame that remains its own source
reference and position, so leaving frames out never shifts the overlay. A
single-slice source (a CR or DX projection, which has no patient geometry:
frames are matched to it by their source reference alone) keeps one frame per
segment, empty or not, so the SR can reference every segment's frame.

Identity: the SEG takes study and patient from the source (highdicom copies
them), lives in a new series ("<label> segmentation (NAME VERSION)", the label "AI"
only for a pipeline that runs a trained model, else "Automated"), and its
Series and SOP Instance UIDs derive from the source series and the pipeline
name and version, so a re-run replaces it. Equipment: Manufacturer
``dicomnode``, Manufacturer's Model Name the pipeline, Software Versions its
version, Device Serial Number the node's name.

BINARY rather than LABELMAP: the LABELMAP SOP class is refused or unknown by
Orthanc 1.10, DCMTK 3.6.7 and the packaged ``dciodvfy``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from dicomnode.protocol import PipelineResult, ResultContext, Segment, Volume

from .common import (
    MANUFACTURER,
    algorithm_family,
    algorithm_parameters,
    check_sources,
    code_string,
    coded,
    copy_identity,
    limit,
    local_coding_schemes,
    object_uid,
    result_texts,
    segment_numbers,
    segment_tracking_uid,
    specific_character_set,
)

__all__ = ["DEFAULT_COLORS", "build_segmentation", "segmentation_series_description"]

LOGGER = logging.getLogger(__name__)

DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)
"""Recommended display colours (RGB) of segments whose ``color`` is not given,
by segment number (cycled): distinct hues that show on grey images."""


def segmentation_series_description(context: ResultContext) -> str:
    """Series Description of the SEG, e.g. ``Automated segmentation (ct-lung 1.0.0)``."""
    return limit(
        f"{context.algorithm.label} segmentation "
        f"({context.pipeline_name} {context.pipeline_version})"
    )


def segmentation_reference(
    result: PipelineResult, volume: Volume, sources: Sequence[Dataset], context: ResultContext
) -> Dataset | None:
    """What a report needs of the SEG :func:`build_segmentation` makes of the
    same result, without building it: the SEG's class, study, series and
    instance UIDs and its segments' labels in segment order.

    Enough for the report of a volume of several slices, which references the
    SEG by segment number (a one-slice SEG is referenced by frame: build it).
    ``None`` where :func:`build_segmentation` makes no SEG.
    """
    if result.label_map is None or not result.segments:
        return None
    reference = Dataset()
    reference.SOPClassUID = SegmentationStorage
    reference.SOPInstanceUID = object_uid(volume, context, "seg", "instance")
    reference.SeriesInstanceUID = object_uid(volume, context, "seg", "series")
    reference.StudyInstanceUID = str(sources[0].StudyInstanceUID)
    reference.Modality = "SEG"
    items = []
    for segment in result.segments:
        item = Dataset()
        item.SegmentLabel = limit(segment.name)
        items.append(item)
    reference.SegmentSequence = items
    return reference


def build_segmentation(
    result: PipelineResult,
    volume: Volume,
    sources: Sequence[Dataset],
    context: ResultContext,
    *,
    series_number: int = 9001,
) -> Dataset | None:
    """Build the BINARY DICOM Segmentation of ``result``'s label map.

    Parameters
    ----------
    result : PipelineResult
        Its ``label_map`` (in the volume's grid) and ``segments``.
    volume : Volume
        The input volume the result was computed on.
    sources : sequence of Dataset
        The source datasets in volume order: ``sources[i]`` is the dataset of
        ``volume.sources[i]`` (a multi-frame dataset repeats, once per frame).
        Header only is enough; pixel data may be present.
    context : ResultContext
        Pipeline name and version (algorithm identification, UIDs) and the
        node's name (Device Serial Number).
    series_number : int
        Series Number of the new SEG series.

    Returns
    -------
    Dataset or None
        A :class:`highdicom.seg.Segmentation` (a pydicom Dataset), not yet
        written; ``None`` when the result has no label map or no segments.
        SOP Instance UID and Series Instance UID are derived from the source
        series and the pipeline name and version (the same on a re-run).

    Raises
    ------
    ValueError
        If the label map is not in the volume's grid, the sources do not
        match ``volume.sources``, or highdicom refuses the inputs.
    """
    if result.label_map is None or not result.segments:
        return None
    result.check_grid(volume)
    check_sources(volume, sources)
    numbers = segment_numbers(result)
    lookup = np.zeros(256, dtype=np.uint8)
    for label, number in numbers.items():
        lookup[label] = number
    # label-map style array: each pixel holds its segment number (0 = none)
    mapped: NDArray[np.uint8] = lookup[result.label_map]
    images, mask = _images_and_mask(volume, sources, mapped)
    parameters = algorithm_parameters(result.models)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=context.pipeline_name,
        family=algorithm_family(context),
        version=context.pipeline_version,
        source=MANUFACTURER,
        parameters=parameters or None,
    )
    descriptions = [
        _description(segment, numbers[segment.label], algorithm, volume, context)
        for segment in result.segments
    ]
    single = len(volume.sources) == 1
    charset = specific_character_set(images[0], result_texts(result, context))
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=object_uid(volume, context, "seg", "series"),
        series_number=series_number,
        sop_instance_uid=object_uid(volume, context, "seg", "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=limit(context.pipeline_name),
        software_versions=limit(context.pipeline_version),
        device_serial_number=limit(context.node_name),
        content_label=code_string(context.pipeline_name),
        content_description=limit(
            f"{context.algorithm.label} segmentation by {context.pipeline_name} "
            f"{context.pipeline_version}"
        ),
        # One slice: keep every segment's frame (one per segment), so the SR can
        # reference each segment's frame even where the segment is empty.
        omit_empty_frames=not single,
        series_description=segmentation_series_description(context),
        coding_schemes=local_coding_schemes(
            code
            for segment in result.segments
            for code in (
                segment.category,
                segment.type,
                segment.anatomic_region,
                segment.laterality,
            )
            if code is not None
        ),
        specific_character_set=charset,
    )
    copy_identity(images[0], seg)
    # highdicom draws a random Dimension Organization UID: derive it like the
    # other UIDs, so a re-run writes the same object
    organization = object_uid(volume, context, "seg", "dimension-organization")
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = organization
    if "FrameOfReferenceUID" not in seg:
        # A projection image (CR, DX): frames without plane position and
        # orientation, so the General Image module wants Patient Orientation
        # (type 2C); the source's, since the frame is pixel for pixel its image.
        seg.PatientOrientation = images[0].get("PatientOrientation", "")
    LOGGER.debug(
        "built SEG with %d segment(s) and %d frame(s) for %d slice(s)",
        len(descriptions),
        int(seg.NumberOfFrames),
        len(volume.sources),
    )
    return seg


def _images_and_mask(
    volume: Volume, sources: Sequence[Dataset], mapped: NDArray[np.uint8]
) -> tuple[list[Dataset], NDArray[np.uint8]]:
    """The source images for highdicom and the mask in their frame order.

    Single-frame sources: the datasets in volume order and the mask as it is
    (``mask[i]`` is the frame of ``sources[i]``). One multi-frame source: that
    dataset once, and the mask rearranged so that ``mask[k]`` is the source's
    frame ``k + 1`` (frames the volume does not hold stay empty).
    """
    multi_frame = [s.frame_number is not None for s in volume.sources]
    if not any(multi_frame):
        return list(sources), mapped
    uids = {s.sop_instance_uid for s in volume.sources}
    if not all(multi_frame) or len(uids) != 1:
        raise ValueError(
            "a SEG references either single-frame source images or frames of one "
            f"multi-frame image; the volume's slices come from {len(uids)} instance(s)"
        )
    image = sources[0]
    frames = int(image.get("NumberOfFrames", 1))
    mask = np.zeros((frames, *mapped.shape[1:]), dtype=np.uint8)
    seen: set[int] = set()
    for index, source in enumerate(volume.sources):
        number = int(source.frame_number or 0)
        if not 1 <= number <= frames or number in seen:
            raise ValueError(
                f"slice {index} names frame {number} of an image of {frames} frames"
                + (" twice" if number in seen else "")
            )
        seen.add(number)
        mask[number - 1] = mapped[index]
    return [image], mask


def _description(
    segment: Segment,
    number: int,
    algorithm: hd.AlgorithmIdentificationSequence,
    volume: Volume,
    context: ResultContext,
) -> hd.seg.SegmentDescription:
    rgb = segment.color or DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)]
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=limit(segment.name),
        segmented_property_category=coded(segment.category),
        segmented_property_type=coded(segment.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=segment_tracking_uid(volume, context, segment.label),
        tracking_id=limit(segment.name),
        anatomic_regions=(
            [coded(segment.anatomic_region)] if segment.anatomic_region is not None else None
        ),
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )
    if segment.laterality is not None:
        # the side modifies the region the segment lies in, else what it is
        if segment.anatomic_region is not None:
            description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
                coded(segment.laterality)
            ]
        else:
            item = description.SegmentedPropertyTypeCodeSequence[0]
            item.SegmentedPropertyTypeModifierCodeSequence = [coded(segment.laterality)]
    return description
