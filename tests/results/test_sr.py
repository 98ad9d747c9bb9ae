"""TID 1500 measurement reports: valid, and they read back with values, units and references."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicomnode.protocol import Code, Finding, Measurement, ModelInfo, PipelineResult
from dicomnode.results.common import segment_numbers
from dicomnode.results.sr import (
    OUTLINE_TRACKING_IDENTIFIER,
    build_report,
    procedure_reported,
)
from dicomnode.synthetic import write_dx_image, write_enhanced_ct
from pipelines.ct_lung.codes import (
    ANATOMICAL_STRUCTURE,
    LAA_950,
    LEFT_LUNG,
    MILLILITER,
    RIGHT_LUNG,
    SEGMENTS,
    VOLUME,
)

from .helpers import NODE, Case, assert_sr_valid, assert_valid, build_case, load, pixelmed
from .test_seg import NODULE

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
NODULE_FINDING = Code("27925004", "SCT", "Nodule")
LOCAL_SCHEME_WARNING = "Unrecognized defined term <99DICOMNODE>"

Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


def read(case: Case) -> hd.sr.Comprehensive3DSR:
    assert case.sr_path is not None
    report = hd.sr.srread(case.sr_path)
    assert isinstance(report, hd.sr.Comprehensive3DSR)
    return report


def groups_of(report: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    """The TID 1500 content of ``report``, whose methods list its measurement groups."""
    content = report.content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def measurement_values(group: Group) -> dict[str, tuple[object, str]]:
    """Concept meaning -> (value, UCUM unit code) of a group's measurements."""
    return {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}


def expected_values(result: PipelineResult, label: int | None) -> dict[str, tuple[object, str]]:
    return {
        m.concept.meaning: (pytest.approx(m.value), m.unit.value)
        for m in result.measurements
        if m.segment_label == label
    }


def algorithm_texts(group: Group) -> list[str]:
    """Name, version and parameters of a group's algorithm identification (TID 4019)."""
    names = {"111001", "111003", "111002"}
    return [
        str(item.TextValue)
        for item in group[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue in names
    ]


def evidence_uids(sr: Dataset) -> set[str]:
    return {
        str(instance.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }


# --- a ct-lung result on the phantom ---------------------------------------------------------


@pytest.mark.peers
def test_report_of_ct_lung_passes_dciodvfy_and_pixelmed(ct_case: Case) -> None:
    assert ct_case.sr_path is not None
    warnings = assert_sr_valid(ct_case.sr_path)
    # ct-lung's %LAA-950 concept is in its private scheme 99DICOMNODE (see its codes);
    # dciodvfy knows only the standard coding scheme designators.
    assert warnings and all(LOCAL_SCHEME_WARNING in w for w in warnings), warnings


def test_one_volumetric_group_per_segment(ct_case: Case) -> None:
    assert ct_case.seg is not None
    report = read(ct_case)
    groups = groups_of(report).get_volumetric_roi_measurement_groups()[:-1]
    # one group per segment with measurements (not the body), placed by its outline
    # in the form OHIF lists
    measured = [
        s
        for s in ct_case.result.segments
        if any(m.segment_label == s.label for m in ct_case.result.measurements)
    ]
    assert [s.label for s in measured] == [RIGHT_LUNG, LEFT_LUNG]
    assert [g.tracking_identifier for g in groups] == [OUTLINE_TRACKING_IDENTIFIER] * 2
    numbers = segment_numbers(ct_case.result)
    for group, segment in zip(groups, measured, strict=True):
        assert group.reference_type == codes.DCM.ReferencedSegment
        reference = group.referenced_segment
        assert reference is not None
        image = reference[0]
        assert image.referenced_sop_instance_uid == ct_case.seg.SOPInstanceUID
        assert image.referenced_sop_class_uid == ct_case.seg.SOPClassUID
        assert image.ReferencedSOPSequence[0].ReferencedSegmentNumber == numbers[segment.label]
        # the SR's tracking UID is the SEG segment's
        seg_segment = ct_case.seg.SegmentSequence[numbers[segment.label] - 1]
        assert group.tracking_uid == seg_segment.TrackingUID
        assert group.finding_type is not None
        assert group.finding_type.value == segment.type.value
        assert measurement_values(group) == expected_values(ct_case.result, segment.label)
    # an anatomical structure's type is its finding site (OHIF labels by it)
    assert [[site.value.meaning for site in g.finding_sites] for g in groups] == [
        [s.type.meaning] for s in measured
    ]
    lungs = {g.finding_sites[0].value.meaning: g for g in groups}
    right = measurement_values(lungs[SEGMENTS[RIGHT_LUNG].name])
    assert right[VOLUME.meaning][1] == MILLILITER.value
    assert right[LAA_950.meaning][1] == "%"


def scoords_of_measurements(group: Group) -> list[Dataset]:
    """The SCOORD items nested under the group's NUM items (INFERRED FROM)."""
    return [
        child
        for item in group[0].ContentSequence
        if item.ValueType == "NUM"
        for child in item.get("ContentSequence", [])
        if child.ValueType == "SCOORD"
    ]


def test_segment_measurements_are_placed_on_their_key_slice(ct_case: Case) -> None:
    """Each lung's measurements are INFERRED FROM the lung's closed outline on the
    slice where it is largest, on that slice's source image (what OHIF needs to
    list them over the CT)."""
    assert ct_case.result.label_map is not None
    report = read(ct_case)
    groups = groups_of(report).get_volumetric_roi_measurement_groups()
    by_uid = {g.tracking_uid: g for g in groups}
    for label in (RIGHT_LUNG, LEFT_LUNG):
        number = segment_numbers(ct_case.result)[label]
        group = by_uid[ct_case.seg.SegmentSequence[number - 1].TrackingUID]  # type: ignore[union-attr]
        scoords = scoords_of_measurements(group)
        assert len(scoords) == 3  # volume, density, %LAA
        mask = ct_case.result.label_map == label
        key = int(np.argmax(mask.sum(axis=(1, 2))))
        for scoord in scoords:
            assert scoord.RelationshipType == "INFERRED FROM"
            assert scoord.GraphicType == "POLYLINE"
            points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
            assert len(points) >= 4 and tuple(points[0]) == tuple(points[-1])  # closed
            image = scoord.ContentSequence[0]
            assert image.RelationshipType == "SELECTED FROM"
            assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
                ct_case.volume.sources[key].sop_instance_uid
            )
            # the outline encloses the segment on that slice: its centre is inside
            rows, columns = np.nonzero(mask[key])
            low, high = points.min(axis=0), points.max(axis=0)
            assert low[0] <= columns.mean() + 0.5 <= high[0]
            assert low[1] <= rows.mean() + 0.5 <= high[1]
            assert low[0] >= columns.min() - 0.5 and high[0] <= columns.max() + 1.5


def test_whole_result_measurements_group(ct_case: Case) -> None:
    """ct-lung's both-lungs measurements (segment_label None) form a TID 1411 group
    that names both lungs as finding sites and outlines them on every slice, so it
    is valid beside the segments' groups (PixelMed)."""
    assert ct_case.result.label_map is not None
    report = read(ct_case)
    assert groups_of(report).get_image_measurement_groups() == []
    group = groups_of(report).get_volumetric_roi_measurement_groups()[-1]
    assert group.tracking_identifier == "Right lung + Left lung"
    assert [site.value.meaning for site in group.finding_sites] == ["Right lung", "Left lung"]
    values = measurement_values(group)
    assert values == expected_values(ct_case.result, None)
    both = sum(
        m.value
        for m in ct_case.result.measurements
        if m.concept == VOLUME and m.segment_label in (RIGHT_LUNG, LEFT_LUNG)
    )
    assert values[VOLUME.meaning][0] == pytest.approx(both)
    regions = group.roi
    assert regions is not None
    lungs = np.isin(ct_case.result.label_map, (RIGHT_LUNG, LEFT_LUNG))
    slices_with_lungs = {
        ct_case.volume.sources[i].sop_instance_uid for i in np.flatnonzero(lungs.any(axis=(1, 2)))
    }
    outlined = {
        region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for region in regions
    }
    assert outlined == slices_with_lungs
    assert all(region.GraphicType == "POLYLINE" for region in regions)


def test_observer_procedure_and_algorithm(ct_case: Case) -> None:
    report = read(ct_case)
    root = report.ContentSequence
    observer = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item
        for item in root
        if item.ValueType != "CONTAINER"
    }
    assert observer["Observer Type"].ConceptCodeSequence[0].CodeValue == "121007"  # Device
    assert observer["Device Observer Name"].TextValue == NODE
    assert observer["Device Observer Manufacturer"].TextValue == "dicomnode"
    assert observer["Device Observer Model Name"].TextValue == "ct-lung"
    procedure = observer["Procedure reported"].ConceptCodeSequence[0]
    assert (procedure.CodeValue, procedure.CodingSchemeDesignator) == ("25045-6", "LN")
    group = groups_of(report).get_volumetric_roi_measurement_groups()[1]
    assert algorithm_texts(group) == ["ct-lung", "1.0.0"]


def test_identity_and_evidence(ct_case: Case) -> None:
    sr, source, seg = ct_case.sr, ct_case.sources[0], ct_case.seg
    assert sr is not None and seg is not None
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID not in (source.SeriesInstanceUID, seg.SeriesInstanceUID)
    assert str(sr.PatientName) == "Müller^Jürgen"
    assert sr.PatientID == source.PatientID
    assert sr.SeriesDescription == "Automated measurements (ct-lung 1.0.0)"
    assert sr.SeriesNumber == 9002
    assert sr.Manufacturer == "dicomnode"
    assert sr.ManufacturerModelName == "ct-lung"
    assert sr.SoftwareVersions == "1.0.0"
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert evidence_uids(sr) == {str(seg.SOPInstanceUID)} | {
        str(ds.SOPInstanceUID) for ds in ct_case.sources
    }
    schemes = [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence]
    assert schemes == ["99DICOMNODE"]


def test_report_uids_are_deterministic(ct_case: Case) -> None:
    again = build_report(
        ct_case.result, ct_case.volume, ct_case.sources, ct_case.context, ct_case.seg
    )
    assert again is not None and ct_case.sr is not None
    assert again.SOPInstanceUID == ct_case.sr.SOPInstanceUID
    assert again.SeriesInstanceUID == ct_case.sr.SeriesInstanceUID


def test_models_are_named_in_every_group(ct_case: Case) -> None:
    result = dataclasses.replace(ct_case.result, models=(ModelInfo("lungnet", "2.1", "cd" * 32),))
    sr = build_report(result, ct_case.volume, ct_case.sources, ct_case.context, ct_case.seg)
    assert sr is not None
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    for group in groups_of(report).get_volumetric_roi_measurement_groups():
        texts = algorithm_texts(group)
        assert "model=lungnet" in texts and "model_version=2.1" in texts


def test_refuses_what_does_not_fit(ct_case: Case) -> None:
    stray = Measurement(VOLUME, 1.0, MILLILITER, segment_label=42)
    result = dataclasses.replace(ct_case.result, measurements=(stray,))
    with pytest.raises(ValueError, match="label 42"):
        build_report(result, ct_case.volume, ct_case.sources, ct_case.context, ct_case.seg)
    other = dataclasses.replace(ct_case.result, segments=ct_case.result.segments[::-1])
    with pytest.raises(ValueError, match="same result"):
        build_report(other, ct_case.volume, ct_case.sources, ct_case.context, ct_case.seg)
    nothing = PipelineResult()
    assert build_report(nothing, ct_case.volume, ct_case.sources, ct_case.context, None) is None
    # segments without measurements are in the SEG alone: no report
    unmeasured = dataclasses.replace(ct_case.result, measurements=())
    assert (
        build_report(unmeasured, ct_case.volume, ct_case.sources, ct_case.context, ct_case.seg)
        is None
    )


# --- edge cases ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_segment_case(ct_case: Case, tmp_path_factory: pytest.TempPathFactory) -> Case:
    result = dataclasses.replace(ct_case.result, segments=(*ct_case.result.segments, NODULE))
    return build_case(
        ct_case.context.source_files,
        result,
        tmp_path_factory.mktemp("sr-empty-segment"),
        volume=ct_case.volume,
        sources=ct_case.sources,
    )


@pytest.mark.peers
def test_empty_segment_report_passes_dciodvfy_and_pixelmed(empty_segment_case: Case) -> None:
    assert empty_segment_case.sr_path is not None
    assert_sr_valid(empty_segment_case.sr_path)


def test_segments_without_measurements_have_no_group(empty_segment_case: Case) -> None:
    """A segment without measurements (the body, an empty nodule) is in the SEG only:
    a group of it would hold nothing, and OHIF 3 refuses a whole report when one
    group has no coordinates."""
    assert empty_segment_case.seg is not None
    described = [str(s.SegmentLabel) for s in empty_segment_case.seg.SegmentSequence]
    assert described[-1] == "Nodule"
    report = read(empty_segment_case)
    groups = groups_of(report).get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        OUTLINE_TRACKING_IDENTIFIER,
        OUTLINE_TRACKING_IDENTIFIER,
        "Right lung + Left lung",
    ]


@pytest.fixture(scope="module")
def dx_findings_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """A classifier's findings on a radiograph: no label map, so no SEG."""
    root = tmp_path_factory.mktemp("dx-findings")
    series = write_dx_image(root / "dx.dcm", 32, 32, patient_name="山田^太郎")
    result = PipelineResult(
        findings=(
            Finding(PNEUMONIA, 0.83, threshold=0.5),
            Finding(NODULE_FINDING, 0.12, threshold=0.4),
            Finding(Code("36118008", "SCT", "Pneumothorax"), 0.05),
        ),
        models=(ModelInfo("cxr-net", "3", "ef" * 32),),
    )
    return build_case(series.paths, result, root / "out", name="cxr-findings", version="2.0")


@pytest.mark.peers
def test_findings_report_passes_dciodvfy_and_pixelmed(dx_findings_case: Case) -> None:
    assert dx_findings_case.sr_path is not None
    assert assert_sr_valid(dx_findings_case.sr_path) == []


def test_findings_become_probabilities_and_evaluations(dx_findings_case: Case) -> None:
    assert dx_findings_case.seg is None
    report = read(dx_findings_case)
    groups = groups_of(report).get_image_measurement_groups()
    assert len(groups) == 3
    found = {}
    for group in groups:
        assert group.finding_type is not None
        values = measurement_values(group)
        assert list(values) == ["Probability"]
        evaluations = {
            q.name.meaning: q[0].ConceptCodeSequence[0].CodeMeaning
            for q in group.get_qualitative_evaluations()
        }
        found[group.finding_type.meaning] = (values["Probability"], evaluations)
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [
            str(dx_findings_case.sources[0].SOPInstanceUID)
        ]
    assert found == {
        "Pneumonia": ((pytest.approx(0.83), "1"), {"Pneumonia": "Present"}),
        "Nodule": ((pytest.approx(0.12), "1"), {"Nodule": "Absent"}),
        "Pneumothorax": ((pytest.approx(0.05), "1"), {}),
    }
    texts = algorithm_texts(groups[0])
    assert texts[:2] == ["cxr-findings", "2.0"]
    assert "threshold=0.5" in texts and "model=cxr-net" in texts
    sr = dx_findings_case.sr
    assert sr is not None
    assert str(sr.PatientName) == "山田^太郎"
    assert sr.SeriesDescription == "AI measurements (cxr-findings 2.0)"
    assert evidence_uids(sr) == {str(dx_findings_case.sources[0].SOPInstanceUID)}
    procedure = procedure_reported("DX")
    # "XR unspecified body region" is not in the CID 100 PixelMed validates against
    assert (procedure.value, procedure.scheme_designator) == ("363679005", "SCT")


@pytest.fixture(scope="module")
def dx_segments_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """Lung segments with areas on a radiograph; the left lung is empty."""
    root = tmp_path_factory.mktemp("dx-segments")
    series = write_dx_image(root / "dx.dcm", 32, 32)
    volume, _ = load(series.paths)
    label_map = np.zeros(volume.array.shape, dtype=np.uint8)
    label_map[0, 4:20, 4:12] = RIGHT_LUNG
    area = Code("42798000", "SCT", "Area")
    result = PipelineResult(
        label_map=label_map,
        segments=(SEGMENTS[RIGHT_LUNG], SEGMENTS[LEFT_LUNG]),
        measurements=(
            Measurement(area, 32.0, Code("mm2", "UCUM", "square millimeter"), RIGHT_LUNG),
            Measurement(area, 0.0, Code("mm2", "UCUM", "square millimeter"), LEFT_LUNG),
        ),
    )
    return build_case(series.paths, result, root / "out", name="cxr-lung", version="0.3")


@pytest.mark.peers
def test_planar_report_passes_dciodvfy_and_pixelmed(dx_segments_case: Case) -> None:
    assert dx_segments_case.sr_path is not None and dx_segments_case.seg_path is not None
    assert assert_sr_valid(dx_segments_case.sr_path) == []
    assert assert_valid(dx_segments_case.seg_path) == []


def test_single_slice_groups_reference_segmentation_frames(dx_segments_case: Case) -> None:
    seg = dx_segments_case.seg
    assert seg is not None
    report = read(dx_segments_case)
    groups = groups_of(report).get_planar_roi_measurement_groups()
    # the right lung is placed by its outline; the empty left lung has nothing to place
    assert [g.tracking_identifier for g in groups] == [OUTLINE_TRACKING_IDENTIFIER, "Left lung"]
    assert len(scoords_of_measurements(groups[0])) == 1
    assert scoords_of_measurements(groups[1]) == []
    frame_segment = {
        index: int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1)
    }
    for number, group in enumerate(groups, start=1):
        assert group.reference_type == codes.DCM.ReferencedSegmentationFrame
        reference = group.referenced_segmentation_frame
        assert reference is not None
        image = reference[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert frame_segment[int(image.ReferencedFrameNumber)] == number
        assert "ReferencedSegmentNumber" not in image  # the frame names the segment
        source = reference[1].ReferencedSOPSequence[0]
        assert source.ReferencedSOPInstanceUID == dx_segments_case.sources[0].SOPInstanceUID
        assert measurement_values(group) == expected_values(
            dx_segments_case.result, dx_segments_case.result.segments[number - 1].label
        )
    procedure = report.ContentSequence
    codes_reported = [
        item.ConceptCodeSequence[0].CodeValue
        for item in procedure
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"
    ]
    assert codes_reported == ["363679005"]


@pytest.fixture(scope="module")
def enhanced_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    root = tmp_path_factory.mktemp("sr-enhanced")
    series = write_enhanced_ct(root / "ect.dcm", frames=10, rows=48, columns=48)
    return build_case(series.paths, None, root / "out")


@pytest.mark.peers
def test_multi_frame_report_passes_dciodvfy_and_pixelmed(enhanced_case: Case) -> None:
    assert enhanced_case.sr_path is not None
    assert_sr_valid(enhanced_case.sr_path)


def test_multi_frame_report_names_the_source_image(enhanced_case: Case) -> None:
    report = read(enhanced_case)
    source = enhanced_case.sources[0]
    for group in groups_of(report).get_volumetric_roi_measurement_groups()[:-1]:
        reference = group.referenced_segment
        assert reference is not None
        assert reference[1].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
    sr = enhanced_case.sr
    assert sr is not None
    assert len(evidence_uids(sr)) == 2  # the one source instance and the SEG


@pytest.mark.peers
def test_segments_without_seg_become_plain_groups(ct_case: Case, tmp_path: Path) -> None:
    """Segments and their measurements reported without a SEG to reference."""
    segment = dataclasses.replace(SEGMENTS[RIGHT_LUNG], category=ANATOMICAL_STRUCTURE)
    result = PipelineResult(
        segments=(segment,),
        measurements=(Measurement(VOLUME, 12.5, MILLILITER, RIGHT_LUNG),),
    )
    sr = build_report(result, ct_case.volume, ct_case.sources, ct_case.context, None)
    assert sr is not None
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    groups = groups_of(report).get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Right lung"]
    assert measurement_values(groups[0]) == {"Volume": (12.5, "mL")}
    errors, _ = pixelmed(path)
    assert errors == []
