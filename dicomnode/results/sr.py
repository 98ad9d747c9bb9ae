"""Comprehensive 3D SR with a TID 1500 Measurement Report, with highdicom.

The report's construction
-------------------------
* **Observer context** (TID 1002): one DEVICE observer, the node running the
  algorithm: Device Observer Name is the node's name, Manufacturer
  ``dicomnode``, Model Name the pipeline's name; its UID is derived from the
  node and pipeline names.
* **Procedure reported**: the LOINC "<modality> unspecified body region" code
  of CID 100 for the source's modality (CT, MR, PET, NM), else (363679005,
  SCT, "Imaging procedure"), projection radiographs included: the LOINC "XR
  unspecified body region" is missing from the CID 100 that PixelMed's SR
  validator checks against, which reports it as an error. The node does not
  know the body region the study was ordered for, and these are the only
  procedure codes CID 100 has that claim nothing it cannot know.
* **One group per segment with measurements** (a segment without any, such as
  ct-lung's body, is described by the SEG alone: its group would hold nothing,
  and OHIF 3 fails to load a whole report when one group has no coordinates).
  With a SEG of several slices: TID 1411
  Volumetric ROI group referencing the segment (Referenced Segment, with
  the source series, or the source image when there is one instance). With
  a SEG of one slice (CR, DX): TID 1410 Planar ROI group referencing the
  segment's frame. The group holds the segment's measurements, its type as
  Finding, its category as Finding Category, its anatomic region as Finding
  Site, and the same Tracking UID as the segment in the SEG. Without a SEG
  (a result with segments but no label map) such groups are TID 1501 groups
  with the source images as Source of Measurement.
* **Placing for viewers.** Each measurement of a segment group carries, as
  INFERRED FROM, the segment's outline (a closed SCOORD POLYLINE) on its key
  slice (where the segment is largest), referencing that source image, and
  the group's Tracking Identifier is the form OHIF 3 lists as a measurement
  (``Cornerstone3DTools@^0.1.0:PlanarFreehandROI``); the Tracking UID is
  still the segment's.
* **Whole-result measurements** (``segment_label=None``, e.g. both lungs
  together): one group named after the segments that have measurements of
  their own ("Right lung + Left lung"), whose anatomic regions are its
  finding sites. With a SEG of several slices it is a TID 1411 Volumetric
  ROI group whose region is those segments' outline on every slice that
  holds them (valid beside the segment groups); otherwise a TID 1501 group
  with the source images as Source of Measurement.
* **Findings** (classification): one group per finding, with the finding's
  concept as Finding, its probability as a measurement (122157, DCM,
  "Probability") in UCUM ``1`` ("no units"), and, when the finding has a
  decision threshold, a qualitative evaluation: the finding's concept with
  (52101004, SCT, "Present") or (272519000, SCT, "Absent"); the threshold
  is an algorithm parameter of the group. The probability is placed at its
  heatmap's peak (a POINT, ``...:Probe``), or by the image's border on a
  projection image without a heatmap, and the group references its heatmap
  overlays and parametric map ("Illustration of ROI"). Beside segment
  groups a finding group is a TID 1411 group whose region is its heat.
* **Detections** (boxes with scores): one TID 1410 Planar ROI group per
  box, its region an SCOORD3D closed POLYLINE: the box's outline in patient
  coordinates on the plane of its central slice; the finding type is the
  detection's concept (only boxes at or above their threshold are
  reported, so no Present/Absent evaluation is added), the score is a measurement
  (122157, DCM, "Probability") whose INFERRED FROM is the same outline as an
  SCOORD POLYLINE on that slice's source image (what 2-D viewers draw), and
  the box's longer and shorter side on that slice are Long Axis (103339001,
  SCT) and Short Axis (103340004, SCT) in mm; the score threshold is an
  algorithm parameter.
* Every group names the algorithm (TID 4019: pipeline name and version,
  models as parameters).

The SEG (when there is one), the heatmap overlays and parametric maps, and
the source images are the report's evidence (Current Requested Procedure
Evidence Sequence).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode.protocol import (
    Code,
    Detection,
    Finding,
    Heatmap,
    Measurement,
    PipelineResult,
    ResultContext,
    Segment,
    Volume,
)

from .common import (
    MANUFACTURER,
    algorithm_parameters,
    check_sources,
    coded,
    copy_identity,
    distinct_sources,
    limit,
    local_coding_schemes,
    object_uid,
    result_codes,
    result_texts,
    segment_numbers,
    segment_tracking_uid,
    specific_character_set,
)
from .overlay import HEAT_THRESHOLD, overlay_series_uid
from .pmap import map_series_uid
from .regions import Outline, Point, outline, peak, slice_outlines, whole_image
from .uids import derived_uid

__all__ = [
    "COMMENT",
    "ILLUSTRATION",
    "INPUT_OUT_OF_RANGE",
    "OUTLINE_TRACKING_IDENTIFIER",
    "POINT_TRACKING_IDENTIFIER",
    "PROBABILITY",
    "PROBABILITY_UNIT",
    "build_report",
    "measurements_series_description",
    "procedure_reported",
]

LOGGER = logging.getLogger(__name__)

PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
"""Concept name of a finding's probability."""

PROBABILITY_UNIT = hd.sr.CodedConcept("1", "UCUM", "no units")
"""UCUM unit of a probability (a number from 0 to 1)."""

LONG_AXIS = hd.sr.CodedConcept("103339001", "SCT", "Long Axis")
SHORT_AXIS = hd.sr.CodedConcept("103340004", "SCT", "Short Axis")
"""Concept names of a detected box's longer and shorter in-plane side."""

MILLIMETER = hd.sr.CodedConcept("mm", "UCUM", "millimeter")

ILLUSTRATION = hd.sr.CodedConcept("121200", "DCM", "Illustration of ROI")
"""Concept name of a finding group's reference to its heatmap overlays and map."""

OUTLINE_TRACKING_IDENTIFIER = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
"""Tracking Identifier of a group placed by an outline: the form OHIF lists as
a measurement (a closed freehand outline)."""

POINT_TRACKING_IDENTIFIER = "Cornerstone3DTools@^0.1.0:Probe"
"""Tracking Identifier of a group placed by a point: the form OHIF lists as a
measurement (a probe)."""

_ANATOMICAL_STRUCTURE = ("SCT", "91723000")

INPUT_OUT_OF_RANGE = Code("INPUTRANGE", "99DICOMNODE", "Input outside the validated range")
"""Finding of the group that flags an input outside the pipeline's validated range."""

COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
"""Concept name of the TEXT item giving why the input is outside the range."""

_TEXT_LIMIT = 1024

_PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
_ABSENT = hd.sr.CodedConcept("272519000", "SCT", "Absent")

_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}

_Group = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def measurements_series_description(context: ResultContext) -> str:
    """Series Description of the SR, e.g. ``Automated measurements (ct-lung 1.0.0)``."""
    return limit(
        f"{context.algorithm.label} measurements "
        f"({context.pipeline_name} {context.pipeline_version})"
    )


def procedure_reported(modality: str) -> hd.sr.CodedConcept:
    """The Procedure Reported of a report on images of ``modality`` (CID 100).

    Parameters
    ----------
    modality : str
        The source's Modality, e.g. ``CT``.

    Returns
    -------
    highdicom.sr.CodedConcept
        The LOINC "... unspecified body region" code of the modality, or
        (363679005, SCT, "Imaging procedure") for other modalities.
    """
    code = _PROCEDURES.get(modality.strip().upper(), codes.SCT.ImagingProcedure)
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def build_report(
    result: PipelineResult,
    volume: Volume,
    sources: Sequence[Dataset],
    context: ResultContext,
    segmentation: Dataset | None,
    *,
    series_number: int = 9002,
    illustrations: Sequence[Dataset] = (),
) -> Dataset | None:
    """Build the TID 1500 measurement report (Comprehensive 3D SR) of ``result``.

    Parameters
    ----------
    result : PipelineResult
        Its segments, measurements and findings.
    volume : Volume
        The input volume the result was computed on.
    sources : sequence of Dataset
        The source datasets in volume order, as for
        :func:`~dicomnode.results.seg.build_segmentation`.
    context : ResultContext
        Pipeline name and version, the node's name (device observer).
    segmentation : Dataset or None
        The SEG built from the same result
        (:func:`~dicomnode.results.seg.build_segmentation`), whose segments
        the groups reference; ``None`` when there is none.
    series_number : int
        Series Number of the new SR series.
    illustrations : sequence of Dataset
        The heatmap overlays (:func:`~dicomnode.results.overlay.build_overlays`)
        and parametric maps (:func:`~dicomnode.results.pmap.build_parametric_maps`)
        built from the same result: they join the evidence, and each
        finding's group references those of its heatmap.

    Returns
    -------
    Dataset or None
        A :class:`highdicom.sr.Comprehensive3DSR` (a pydicom Dataset), not
        yet written; ``None`` when the result has no measurements or
        findings (segments alone are in the SEG). UIDs are derived from the
        source series and the pipeline name and version.

    Raises
    ------
    ValueError
        If a measurement names a label that no segment has, the sources do
        not match ``volume.sources``, the SEG does not hold the result's
        segments, or highdicom refuses the inputs.
    """
    if not (
        result.segments
        or result.measurements
        or result.findings
        or result.detections
        or context.out_of_range
    ):
        return None
    check_sources(volume, sources)
    images = distinct_sources(sources)
    labels = {segment.label for segment in result.segments}
    for item in result.measurements:
        if item.segment_label is not None and item.segment_label not in labels:
            raise ValueError(
                f"measurement {item.concept.meaning!r} is of label {item.segment_label}, "
                "which no segment of the result has"
            )
    if segmentation is not None:
        _check_segmentation(segmentation, result)
    builder = _Builder(result, volume, images, context, segmentation, illustrations)
    measured = {m.segment_label for m in result.measurements}
    groups: list[_Group] = [
        builder.segment_group(segment) for segment in result.segments if segment.label in measured
    ]
    whole = [m for m in result.measurements if m.segment_label is None]
    if whole:
        groups.append(builder.whole_result_group(whole))
    groups += [builder.finding_group(index, f) for index, f in enumerate(result.findings)]
    groups += [builder.detection_group(index, d) for index, d in enumerate(result.detections)]
    if context.out_of_range:
        groups.append(builder.out_of_range_group(context.out_of_range))
    if not groups:
        LOGGER.debug("no segment has measurements and there are no findings: no SR")
        return None
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device-observer", context.node_name, context.pipeline_name),
            name=limit(context.node_name),
            manufacturer_name=MANUFACTURER,
            model_name=limit(context.pipeline_name),
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure_reported(volume.modality),
        imaging_measurements=groups,
    )
    charset = specific_character_set(images[0], result_texts(result, context))
    evidence = [
        *images,
        *([segmentation] if segmentation is not None else []),
        *illustrations,
    ]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=object_uid(volume, context, "sr", "series"),
        series_number=series_number,
        sop_instance_uid=object_uid(volume, context, "sr", "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=context.final,  # the rule's result_status, as the ORU says
        is_verified=False,
        series_description=measurements_series_description(context),
        manufacturer_model_name=limit(context.pipeline_name),
        software_versions=limit(context.pipeline_version),
        device_serial_number=limit(context.node_name),
        coding_schemes=local_coding_schemes(
            [*result_codes(result), *([INPUT_OUT_OF_RANGE] if context.out_of_range else [])]
        ),
        specific_character_set=charset,
    )
    copy_identity(images[0], sr)
    LOGGER.debug("built SR with %d measurement group(s)", len(groups))
    return sr


def _check_segmentation(segmentation: Dataset, result: PipelineResult) -> None:
    described = [str(item.SegmentLabel) for item in segmentation.get("SegmentSequence", [])]
    expected = [limit(segment.name) for segment in result.segments]
    if described != expected:
        raise ValueError(
            f"the SEG describes the segments {described}, the result has {expected}: "
            "build the SEG from the same result"
        )


class _Builder:
    """Measurement groups of one report."""

    def __init__(
        self,
        result: PipelineResult,
        volume: Volume,
        images: Sequence[Dataset],
        context: ResultContext,
        segmentation: Dataset | None,
        illustrations: Sequence[Dataset] = (),
    ) -> None:
        self.result = result
        self.illustrations = illustrations
        self.volume = volume
        self.images = images
        self.context = context
        self.segmentation = segmentation
        self.numbers = segment_numbers(result)
        self.parameters = algorithm_parameters(result.models)

    def algorithm(self, **extra: str) -> hd.sr.AlgorithmIdentification:
        parameters = [f"{k}={v}" for k, v in {**self.parameters, **extra}.items()]
        return hd.sr.AlgorithmIdentification(
            name=self.context.pipeline_name,
            version=self.context.pipeline_version,
            parameters=parameters or None,
        )

    def measurements(self, items: Sequence[Measurement]) -> list[hd.sr.Measurement]:
        return [
            hd.sr.Measurement(name=coded(m.concept), value=m.value, unit=coded(m.unit))
            for m in items
        ]

    def image_of(self, index: int) -> hd.sr.SourceImageForRegion:
        """The source image (and frame) of slice ``index``."""
        source = self.volume.sources[index]
        return hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=source.sop_class_uid,
            referenced_sop_instance_uid=source.sop_instance_uid,
            referenced_frame_numbers=(
                [source.frame_number] if source.frame_number is not None else None
            ),
        )

    def coordinates(self, place: Outline | Point) -> hd.sr.CoordinatesForMeasurement:
        """``place`` as an SCOORD on its source image: a closed POLYLINE or a POINT."""
        return hd.sr.CoordinatesForMeasurement(
            graphic_type=(
                hd.sr.GraphicTypeValues.POINT
                if isinstance(place, Point)
                else hd.sr.GraphicTypeValues.POLYLINE
            ),
            graphic_data=place.points,
            source_image=self.image_of(place.index),
        )

    def mask(self, labels: Sequence[int]) -> np.ndarray | None:
        if self.result.label_map is None or not labels:
            return None
        # one comparison per label: np.isin converts the whole label map to
        # intp first, eight times its size and most of the SR's time on a CT
        mask = np.asarray(self.result.label_map == labels[0])
        for label in labels[1:]:
            mask |= self.result.label_map == label
        return mask

    def source_images(self) -> list[hd.sr.SourceImageForMeasurementGroup]:
        return [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in self.images]

    def segment_group(self, segment: Segment) -> _Group:
        items = [m for m in self.result.measurements if m.segment_label == segment.label]
        mask = self.mask([segment.label])
        place = outline(mask) if mask is not None and items else None
        tracking = hd.sr.TrackingIdentifier(
            uid=segment_tracking_uid(self.volume, self.context, segment.label),
            identifier=OUTLINE_TRACKING_IDENTIFIER if place is not None else limit(segment.name),
        )
        site = _finding_site(segment)
        sites = [site] if site is not None else None
        measurements = self.measurements(items)
        group = self._segment_group(segment, tracking, sites, measurements)
        if place is not None:
            self.place_measurements(group, place)
        return group

    def place_measurements(self, group: _Group, place: Outline | Point) -> None:
        """Nest ``place`` under each of the group's measurements (INFERRED FROM
        SCOORD), where OHIF looks for a measurement's coordinates. highdicom's
        ROI group classes refuse measurement coordinates, as the group's
        region is the ROI; here they are where a viewer places the numbers,
        besides the region."""
        for item in group[0].ContentSequence:
            if item.ValueType == "NUM":
                coordinates = self.coordinates(place)
                if "ContentSequence" in item:
                    item.ContentSequence.append(coordinates)
                else:
                    item.ContentSequence = hd.sr.ContentSequence([coordinates])

    def _segment_group(
        self,
        segment: Segment,
        tracking: hd.sr.TrackingIdentifier,
        sites: list[hd.sr.FindingSite] | None,
        measurements: list[hd.sr.Measurement],
    ) -> _Group:
        seg = self.segmentation
        if seg is None:
            return hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=coded(segment.type),
                finding_category=coded(segment.category),
                finding_sites=sites,
                algorithm_id=self.algorithm(),
                measurements=measurements,
                source_images=self.source_images(),
            )
        number = self.numbers[segment.label]
        if len(self.volume.sources) == 1:
            planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=self.segmentation_frame(seg, number),
                finding_type=coded(segment.type),
                finding_category=coded(segment.category),
                finding_sites=sites,
                algorithm_id=self.algorithm(),
                measurements=measurements,
            )
            _drop_segment_number_beside_frame_number(planar)
            return planar
        if len(self.images) == 1:
            reference = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=number,
                source_images=[hd.sr.SourceImageForSegmentation.from_source_image(self.images[0])],
            )
        else:
            reference = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(self.volume.series_instance_uid),
            )
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=reference,
            finding_type=coded(segment.type),
            finding_category=coded(segment.category),
            finding_sites=sites,
            algorithm_id=self.algorithm(),
            measurements=measurements,
        )

    def segmentation_frame(self, seg: Dataset, number: int) -> hd.sr.ReferencedSegmentationFrame:
        """Reference to segment ``number``'s frame of a one-slice SEG."""
        source = self.volume.sources[0]
        return hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            frame_number=_frames_of_segment(seg, number)[0],
            segment_number=number,
            source_image=hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=source.sop_class_uid,
                referenced_sop_instance_uid=source.sop_instance_uid,
                referenced_frame_numbers=(
                    [source.frame_number] if source.frame_number is not None else None
                ),
            ),
        )

    def whole_result_group(self, items: Sequence[Measurement]) -> _Group:
        """The group of the measurements of no one segment.

        They are taken to be of the segments that have measurements of their
        own (ct-lung: both lungs), whose anatomic regions are the group's
        finding sites. With a SEG of several slices the group is a TID 1411
        Volumetric ROI group whose region is the outline of those segments
        on every slice that holds them (Image Region), so it is valid beside
        the segments' groups; otherwise a TID 1501 group of the source images.
        """
        measured = [
            segment
            for segment in self.result.segments
            if any(m.segment_label == segment.label for m in self.result.measurements)
        ]
        sites = [
            site for site in (_finding_site(segment) for segment in measured) if site is not None
        ]
        names = [segment.name for segment in measured]
        tracking = hd.sr.TrackingIdentifier(
            uid=object_uid(self.volume, self.context, "sr", "whole-result"),
            identifier=limit(" + ".join(names) if names else "Whole-result measurements"),
        )
        mask = self.mask([segment.label for segment in measured])
        regions = self.regions(mask) if mask is not None and self.volumetric() else []
        if regions:
            return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_regions=regions,
                finding_sites=sites or None,
                algorithm_id=self.algorithm(),
                measurements=self.measurements(items),
            )
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_sites=sites or None,
            algorithm_id=self.algorithm(),
            measurements=self.measurements(items),
            source_images=self.source_images(),
        )

    def heatmap_of(self, finding: Finding) -> Heatmap | None:
        for heatmap in self.result.heatmaps:
            if (heatmap.finding.scheme, heatmap.finding.value) == (
                finding.concept.scheme,
                finding.concept.value,
            ):
                return heatmap
        return None

    def finding_group(self, index: int, finding: Finding) -> _Group:
        extra = {"threshold": f"{finding.threshold:g}"} if finding.threshold is not None else {}
        evaluations = (
            [
                hd.sr.QualitativeEvaluation(
                    name=coded(finding.concept),
                    value=_PRESENT if finding.positive else _ABSENT,
                )
            ]
            if finding.threshold is not None
            else None
        )
        heatmap = self.heatmap_of(finding)
        place: Outline | Point | None = (
            peak(heatmap.array, HEAT_THRESHOLD) if heatmap is not None else None
        )
        if place is None and len(self.volume.sources) == 1:
            # A finding on a projection image is about the whole image.
            place = whole_image(self.volume.array.shape)
        tracking = hd.sr.TrackingIdentifier(
            uid=object_uid(self.volume, self.context, "sr", "finding", index),
            identifier=(
                POINT_TRACKING_IDENTIFIER
                if isinstance(place, Point)
                else OUTLINE_TRACKING_IDENTIFIER
                if place is not None
                else limit(f"Finding: {finding.concept.meaning}")
            ),
        )
        probability = hd.sr.Measurement(
            name=PROBABILITY, value=finding.probability, unit=PROBABILITY_UNIT
        )
        regions = (
            self.regions(heatmap.array > HEAT_THRESHOLD)
            if heatmap is not None and self.volumetric()
            else []
        )
        group: _Group
        if regions:
            # Beside the volumetric groups of a SEG's segments: a volumetric
            # group too, its region the heat above the drawing threshold.
            group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_regions=regions,
                finding_type=coded(finding.concept),
                algorithm_id=self.algorithm(**extra),
                measurements=[probability],
                qualitative_evaluations=evaluations,
            )
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=coded(finding.concept),
                algorithm_id=self.algorithm(**extra),
                measurements=[probability],
                qualitative_evaluations=evaluations,
                source_images=self.source_images(),
            )
        if place is not None:
            self.place_measurements(group, place)
        group[0].ContentSequence.extend(self.illustrations_of(finding))
        return group

    def detection_group(self, index: int, detection: Detection) -> _Group:
        """A TID 1410 group of one detected box (see the module)."""
        volume = self.volume
        s0, r0, c0, s1, r1, c1 = detection.box
        middle = min(int((s0 + s1) / 2), volume.array.shape[0] - 1)
        corners = [(r0, c0), (r0, c1), (r1, c1), (r1, c0), (r0, c0)]
        planar = np.array([[c, r] for r, c in corners], dtype=np.float32)
        origin = np.asarray(volume.origin, dtype=np.float64)
        along = [
            np.asarray(volume.slice_direction, dtype=np.float64) * volume.spacing[0],
            np.asarray(volume.column_direction, dtype=np.float64) * volume.spacing[1],
            np.asarray(volume.row_direction, dtype=np.float64) * volume.spacing[2],
        ]
        # voxel i spans [i, i + 1): its centre, at origin + i * step, is at i + 0.5
        spatial = np.array(
            [origin + middle * along[0] + (r - 0.5) * along[1] + (c - 0.5) * along[2]
             for r, c in corners],
            dtype=np.float64,
        )  # fmt: skip
        region = hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
            graphic_data=spatial,
            frame_of_reference_uid=volume.frame_of_reference_uid,
        )
        tracking = hd.sr.TrackingIdentifier(
            uid=object_uid(volume, self.context, "sr", "detection", index),
            identifier=OUTLINE_TRACKING_IDENTIFIER,
        )
        sides = sorted(((r1 - r0) * volume.spacing[1], (c1 - c0) * volume.spacing[2]))
        measurements = [
            hd.sr.Measurement(name=PROBABILITY, value=detection.score, unit=PROBABILITY_UNIT),
            hd.sr.Measurement(name=LONG_AXIS, value=float(sides[1]), unit=MILLIMETER),
            hd.sr.Measurement(name=SHORT_AXIS, value=float(sides[0]), unit=MILLIMETER),
        ]
        extra = {"threshold": f"{detection.threshold:g}"} if detection.threshold is not None else {}
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=coded(detection.concept),
            algorithm_id=self.algorithm(**extra),
            measurements=measurements,
        )
        self.place_measurements(group, Outline(middle, planar))
        return group

    def out_of_range_group(self, reasons: Sequence[str]) -> _Group:
        """The flag of an input outside the pipeline's validated range: a group
        whose finding is :data:`INPUT_OUT_OF_RANGE`, evaluated Present, with
        the reasons as a Comment (TEXT). Beside the TID 1411 groups of a SEG
        of several slices it is a TID 1411 group too, its region the border
        of the middle slice (the flag is about the whole input); otherwise a
        TID 1501 group with the source images as Source of Measurement."""
        tracking = hd.sr.TrackingIdentifier(
            uid=object_uid(self.volume, self.context, "sr", "input-range"),
            identifier="Input range check",
        )
        evaluations = [hd.sr.QualitativeEvaluation(name=coded(INPUT_OUT_OF_RANGE), value=_PRESENT)]
        group: _Group
        if self.volumetric():
            middle = len(self.volume.sources) // 2
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=whole_image(self.volume.array.shape).points,
                source_image=self.image_of(middle),
            )
            group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_regions=[region],
                finding_type=coded(INPUT_OUT_OF_RANGE),
                algorithm_id=self.algorithm(),
                qualitative_evaluations=evaluations,
            )
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=coded(INPUT_OUT_OF_RANGE),
                algorithm_id=self.algorithm(),
                qualitative_evaluations=evaluations,
                source_images=self.source_images(),
            )
        text = "Input outside the validated range: " + "; ".join(reasons)
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=COMMENT,
                value=text[:_TEXT_LIMIT],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
        return group

    def volumetric(self) -> bool:
        """Whether the report's segment groups are TID 1411 volumetric groups
        (a SEG of several slices), which every other group must then match."""
        return self.segmentation is not None and len(self.volume.sources) > 1

    def regions(self, mask: np.ndarray) -> list[hd.sr.ImageRegion]:
        """Closed outlines of ``mask`` on every slice that holds it, as Image Regions."""
        return [
            hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=item.points,
                source_image=self.image_of(item.index),
            )
            for item in slice_outlines(mask)
        ]

    def illustrations_of(self, finding: Finding) -> list[hd.sr.ImageContentItem]:
        """IMAGE items (Illustration of ROI) naming the finding's heatmap overlays
        and parametric map."""
        series = {
            overlay_series_uid(self.volume, self.context, finding.concept),
            map_series_uid(self.volume, self.context, finding.concept),
        }
        return [
            hd.sr.ImageContentItem(
                name=ILLUSTRATION,
                referenced_sop_class_uid=str(ds.SOPClassUID),
                referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for ds in self.illustrations
            if str(ds.SeriesInstanceUID) in series
        ]


def _finding_site(segment: Segment) -> hd.sr.FindingSite | None:
    """The segment's finding site (:func:`_site`) with its laterality, if any."""
    site = _site(segment)
    if site is None:
        return None
    side = coded(segment.laterality) if segment.laterality is not None else None
    return hd.sr.FindingSite(coded(site), laterality=side)


def _site(segment: Segment) -> Code | None:
    """Where a segment is: its anatomic region, or its type when the segment is
    an anatomical structure (ct-lung's "Right lung")."""
    if segment.anatomic_region is not None:
        return segment.anatomic_region
    if (segment.category.scheme, segment.category.value) == _ANATOMICAL_STRUCTURE:
        return segment.type
    return None


def _frames_of_segment(segmentation: Dataset, number: int) -> list[int]:
    """The SEG's frame numbers (1-based) that hold segment ``number``."""
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    count = int(segmentation.NumberOfFrames)
    if "SegmentIdentificationSequence" in shared:
        found = int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frames = list(range(1, count + 1)) if found == number else []
    else:
        frames = [
            index
            for index, item in enumerate(segmentation.PerFrameFunctionalGroupsSequence, start=1)
            if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
        ]
    if not frames:
        raise ValueError(f"the SEG has no frame of segment {number}")
    return frames


def _drop_segment_number_beside_frame_number(group: Sequence[Dataset]) -> None:
    """Remove Referenced Segment Number where Referenced Frame Number is present.

    highdicom writes both into TID 1410's "Referenced Segmentation Frame"
    item. The Image Reference Macro (PS3.3 Table C.18.4-1) requires the
    segment number only where no frame number is given, and ``dciodvfy``
    reports the pair as an error ("shall not be present when
    ReferencedFrameNumber is present"); the frame of a BINARY SEG already
    names its one segment.
    """
    pending = list(group)
    while pending:
        item = pending.pop()
        for reference in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                del reference.ReferencedSegmentNumber
        pending.extend(item.get("ContentSequence", []))
