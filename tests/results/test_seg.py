"""DICOM-SEG of pipeline results: valid, read back as written, laid over the right slices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from dicomnode.protocol import Code, Measurement, ModelInfo, PipelineResult, Segment
from dicomnode.results.common import segment_numbers
from dicomnode.results.seg import build_segmentation
from dicomnode.synthetic import write_ct_series, write_dx_image, write_enhanced_ct
from pipelines.ct_lung.codes import ANATOMICAL_STRUCTURE, LEFT_LUNG, RIGHT_LUNG, SEGMENTS

from .helpers import Case, assert_valid, build_case, context, load

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LUNG_REGION = Code("39607008", "SCT", "Lung structure")
NODULE = Segment(
    9,
    "Nodule",
    Code("49755003", "SCT", "Morphologically abnormal structure"),
    Code("27925004", "SCT", "Nodule"),
    anatomic_region=LUNG_REGION,
)


def expected_masks(result: PipelineResult) -> NDArray[np.bool_]:
    """(slices, rows, columns, segments): what each segment should hold."""
    assert result.label_map is not None
    return np.stack([result.label_map == s.label for s in result.segments], axis=-1)


def segment_of(item: Dataset, seg: Dataset) -> int:
    shared = seg.SharedFunctionalGroupsSequence[0]
    holder = item if "SegmentIdentificationSequence" in item else shared
    return int(holder.SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def frame_source(item: Dataset) -> Dataset:
    source: Dataset = item.DerivationImageSequence[0].SourceImageSequence[0]
    return source


# --- a ct-lung result on the phantom ---------------------------------------------------------


@pytest.mark.peers
def test_seg_of_ct_lung_passes_dciodvfy(ct_case: Case) -> None:
    assert ct_case.seg_path is not None
    assert assert_valid(ct_case.seg_path) == []


def test_masks_read_back_as_written(ct_case: Case) -> None:
    assert ct_case.seg_path is not None
    seg = hd.seg.segread(ct_case.seg_path)
    assert seg.SegmentationType == "BINARY"
    assert seg.SOPClassUID == SEGMENTATION_STORAGE
    uids = [s.sop_instance_uid for s in ct_case.volume.sources]
    pixels = seg.get_pixels_by_source_instance(
        uids, segment_numbers=[1, 2, 3], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels.astype(bool), expected_masks(ct_case.result))
    # the whole label map, relabelled to segment numbers
    numbers = segment_numbers(ct_case.result)
    assert ct_case.result.label_map is not None
    combined = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    lookup = np.zeros(256, dtype=np.uint8)
    for label, number in numbers.items():
        lookup[label] = number
    np.testing.assert_array_equal(combined, lookup[ct_case.result.label_map])


def test_volume_reads_back_in_patient_space(ct_case: Case) -> None:
    """highdicom's volume of the SEG holds each slice's labels at that slice's position."""
    assert ct_case.seg_path is not None and ct_case.result.label_map is not None
    seg = hd.seg.segread(ct_case.seg_path)
    volume = seg.get_volume(combine_segments=True)
    assert volume.spatial_shape == ct_case.result.label_map.shape
    numbers = segment_numbers(ct_case.result)
    lookup = np.zeros(256, dtype=np.uint8)
    for label, number in numbers.items():
        lookup[label] = number
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in ct_case.sources])
    corners = volume.map_indices_to_reference(
        np.array([[k, 0, 0] for k in range(volume.spatial_shape[0])])
    )
    # in-plane axes as in the source (rows down, columns across), slices in any order
    np.testing.assert_allclose(volume.affine[:3, 2], [6.25, 0, 0])
    np.testing.assert_allclose(volume.affine[:3, 1], [0, 6.25, 0])
    for k, corner in enumerate(corners):
        index = int(np.argmin(np.linalg.norm(positions - corner, axis=1)))
        np.testing.assert_allclose(positions[index], corner, atol=1e-3)
        np.testing.assert_array_equal(volume.array[k], lookup[ct_case.result.label_map[index]])


def test_every_frame_lies_on_its_source_slice(ct_case: Case) -> None:
    """Omitted empty frames shift nothing: each frame names its source instance,
    lies at that instance's position and holds that slice's mask."""
    assert ct_case.seg_path is not None and ct_case.result.label_map is not None
    seg = pydicom.dcmread(ct_case.seg_path)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    index_of = {s.sop_instance_uid: i for i, s in enumerate(ct_case.volume.sources)}
    labels = {n: label for label, n in segment_numbers(ct_case.result).items()}
    per_slice = np.count_nonzero(expected_masks(ct_case.result).any(axis=(1, 2)))
    assert len(seg.PerFrameFunctionalGroupsSequence) == per_slice  # empty frames omitted
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = frame_source(item)
        index = index_of[str(source.ReferencedSOPInstanceUID)]
        dataset = ct_case.sources[index]
        assert source.ReferencedSOPClassUID == dataset.SOPClassUID
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(
            position, [float(v) for v in dataset.ImagePositionPatient], atol=1e-4
        )
        label = labels[segment_of(item, seg)]
        np.testing.assert_array_equal(frame.astype(bool), ct_case.result.label_map[index] == label)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [float(v) for v in orientation.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert seg.FrameOfReferenceUID == ct_case.sources[0].FrameOfReferenceUID


def test_segment_descriptions(ct_case: Case) -> None:
    assert ct_case.seg is not None
    seg = hd.seg.Segmentation.from_dataset(ct_case.seg)
    assert seg.segment_numbers == [1, 2, 3]
    for number, segment in enumerate(ct_case.result.segments, start=1):
        description = seg.get_segment_description(number)
        assert description.segment_label == segment.name
        assert description.segmented_property_category.value == segment.category.value
        assert description.segmented_property_category.scheme_designator == "SCT"
        assert description.segmented_property_type.value == segment.type.value
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification
        assert algorithm is not None
        assert algorithm[0].AlgorithmName == "ct-lung"
        assert algorithm[0].AlgorithmVersion == "1.0.0"
        assert algorithm[0].AlgorithmFamilyCodeSequence[0].CodeValue == "123104"
        assert "AlgorithmParameters" not in algorithm[0]  # ct-lung has no weights
        assert segment.color is not None
        lab = description.RecommendedDisplayCIELabValue
        rgb = hd.color.CIELabColor.from_dicom_value(lab).to_rgb(clip=True)
        assert np.abs(np.subtract(rgb, segment.color)).max() <= 2
    assert ct_case.seg.SegmentSequence[1].SegmentLabel == SEGMENTS[RIGHT_LUNG].name
    assert ct_case.seg.SegmentSequence[2].SegmentLabel == SEGMENTS[LEFT_LUNG].name


def test_identity_and_equipment(ct_case: Case) -> None:
    seg, source = ct_case.seg, ct_case.sources[0]
    assert seg is not None
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
    ):
        assert seg[keyword].value == source[keyword].value, keyword
    assert str(seg.PatientName) == "Müller^Jürgen"
    assert seg.SpecificCharacterSet == "ISO_IR 192"
    assert seg.SeriesDescription == "Automated segmentation (ct-lung 1.0.0)"
    assert seg.SeriesNumber == 9001
    assert seg.Modality == "SEG"
    assert seg.Manufacturer == "dicomnode"
    assert seg.ManufacturerModelName == "ct-lung"
    assert seg.SoftwareVersions == "1.0.0"
    assert seg.DeviceSerialNumber == "DICOMNODE"
    assert seg.ContentLabel == "CT_LUNG"
    assert "ct-lung 1.0.0" in seg.ContentDescription
    referenced = {
        str(i.ReferencedSOPInstanceUID)
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert referenced <= {str(ds.SOPInstanceUID) for ds in ct_case.sources}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def test_uids_are_deterministic(ct_case: Case) -> None:
    again = build_segmentation(ct_case.result, ct_case.volume, ct_case.sources, ct_case.context)
    assert again is not None and ct_case.seg is not None
    assert again.SOPInstanceUID == ct_case.seg.SOPInstanceUID
    assert again.SeriesInstanceUID == ct_case.seg.SeriesInstanceUID
    organization = ct_case.seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    assert again.DimensionOrganizationSequence[0].DimensionOrganizationUID == organization
    assert {i.DimensionOrganizationUID for i in again.DimensionIndexSequence} == {organization}
    newer = dataclasses.replace(ct_case.context, pipeline_version="1.0.1")
    other = build_segmentation(ct_case.result, ct_case.volume, ct_case.sources, newer)
    assert other is not None
    assert other.SOPInstanceUID != ct_case.seg.SOPInstanceUID
    assert other.SeriesInstanceUID != ct_case.seg.SeriesInstanceUID


def test_no_seg_without_label_map_or_segments(ct_case: Case) -> None:
    no_map = dataclasses.replace(ct_case.result, label_map=None)
    assert build_segmentation(no_map, ct_case.volume, ct_case.sources, ct_case.context) is None
    assert ct_case.result.label_map is not None
    empty = PipelineResult(label_map=np.zeros_like(ct_case.result.label_map))
    assert build_segmentation(empty, ct_case.volume, ct_case.sources, ct_case.context) is None


def test_sources_must_be_in_volume_order(ct_case: Case) -> None:
    reversed_sources = list(reversed(ct_case.sources))
    with pytest.raises(ValueError, match="source dataset 0"):
        build_segmentation(ct_case.result, ct_case.volume, reversed_sources, ct_case.context)
    with pytest.raises(ValueError, match="23 source datasets"):
        build_segmentation(ct_case.result, ct_case.volume, ct_case.sources[1:], ct_case.context)


def test_models_are_named_in_the_algorithm_identification(ct_case: Case) -> None:
    sha = "ab" * 32
    result = dataclasses.replace(ct_case.result, models=(ModelInfo("lungnet", "2.1", sha),))
    seg = build_segmentation(result, ct_case.volume, ct_case.sources, ct_case.context)
    assert seg is not None
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ct-lung"
    parameters = dict(p.split("=", 1) for p in algorithm.AlgorithmParameters.split(","))
    assert parameters == {"model": "lungnet", "model_version": "2.1", "model_sha256": sha}


# --- edge cases ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_segment_case(ct_case: Case, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """The ct-lung result plus a segment (with anatomic region) whose label never occurs."""
    result = dataclasses.replace(ct_case.result, segments=(*ct_case.result.segments, NODULE))
    out = tmp_path_factory.mktemp("empty-segment")
    return build_case(
        ct_case.context.source_files,
        result,
        out,
        volume=ct_case.volume,
        sources=ct_case.sources,
    )


@pytest.mark.peers
def test_empty_segment_passes_dciodvfy(empty_segment_case: Case) -> None:
    assert empty_segment_case.seg_path is not None
    assert assert_valid(empty_segment_case.seg_path) == []


def test_empty_segment_is_described_without_frames(empty_segment_case: Case) -> None:
    assert empty_segment_case.seg_path is not None
    seg = hd.seg.segread(empty_segment_case.seg_path)
    assert seg.segment_numbers == [1, 2, 3, 4]
    nodule = seg.get_segment_description(4)
    assert nodule.segment_label == "Nodule"
    assert [c.value for c in nodule.anatomic_regions] == [LUNG_REGION.value]
    assert all(segment_of(item, seg) != 4 for item in seg.PerFrameFunctionalGroupsSequence)
    uids = [s.sop_instance_uid for s in empty_segment_case.volume.sources]
    pixels = seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels.astype(bool), expected_masks(empty_segment_case.result))
    assert not pixels[..., 3].any()


@pytest.mark.peers
def test_all_segments_empty(ct_case: Case, tmp_path: Path) -> None:
    """A label map without any labelled pixel: highdicom keeps every (empty) frame."""
    assert ct_case.result.label_map is not None
    result = PipelineResult(label_map=np.zeros_like(ct_case.result.label_map), segments=(NODULE,))
    seg = build_segmentation(result, ct_case.volume, ct_case.sources, ct_case.context)
    assert seg is not None
    assert int(seg.NumberOfFrames) == len(ct_case.sources)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert assert_valid(path) == []
    assert not hd.seg.segread(path).get_volume().array.any()


@pytest.fixture(scope="module")
def dx_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """Two lung segments of a DX radiograph (no patient geometry), one of them empty,
    for a patient with a Japanese name."""
    root = tmp_path_factory.mktemp("dx")
    series = write_dx_image(root / "dx.dcm", 48, 40, patient_name="山田^太郎")
    volume, _ = load(series.paths)
    label_map = np.zeros(volume.array.shape, dtype=np.uint8)
    label_map[0, 10:30, 5:15] = RIGHT_LUNG
    result = PipelineResult(
        label_map=label_map, segments=(SEGMENTS[RIGHT_LUNG], SEGMENTS[LEFT_LUNG])
    )
    return build_case(series.paths, result, root / "out", name="cxr-lung", version="0.3")


@pytest.mark.peers
def test_dx_seg_passes_dciodvfy(dx_case: Case) -> None:
    assert dx_case.seg_path is not None
    assert assert_valid(dx_case.seg_path) == []


def test_dx_seg_has_one_frame_per_segment(dx_case: Case) -> None:
    assert dx_case.seg_path is not None and dx_case.result.label_map is not None
    seg = hd.seg.segread(dx_case.seg_path)
    source = dx_case.sources[0]
    assert "FrameOfReferenceUID" not in seg
    assert "PlanePositionSequence" not in seg.PerFrameFunctionalGroupsSequence[0]
    assert list(seg.PatientOrientation) == list(source.PatientOrientation)
    assert int(seg.NumberOfFrames) == 2  # the empty left lung keeps its frame
    for item in seg.PerFrameFunctionalGroupsSequence:
        assert frame_source(item).ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([str(source.SOPInstanceUID)])
    assert pixels.shape == (1, 48, 40, 2)
    np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), dx_case.result.label_map[0] == 2)
    assert not pixels[..., 1].any()
    assert str(seg.PatientName) == "山田^太郎"
    assert seg.SpecificCharacterSet == "ISO_IR 192"
    assert seg.SeriesDescription == "AI segmentation (cxr-lung 0.3)"


@pytest.fixture(scope="module")
def enhanced_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """ct-lung on one Enhanced CT instance whose frames are stored out of order."""
    root = tmp_path_factory.mktemp("enhanced")
    order = [5, 0, 11, 3, 8, 1, 10, 6, 2, 9, 4, 7]
    series = write_enhanced_ct(root / "ect.dcm", frames=12, rows=48, columns=48, frame_order=order)
    return build_case(series.paths, None, root / "out")


@pytest.mark.peers
def test_multi_frame_seg_passes_dciodvfy(enhanced_case: Case) -> None:
    assert enhanced_case.seg_path is not None
    assert assert_valid(enhanced_case.seg_path) == []


def test_multi_frame_frames_reference_their_source_frames(enhanced_case: Case) -> None:
    assert enhanced_case.seg_path is not None and enhanced_case.result.label_map is not None
    source = enhanced_case.sources[0]
    seg = hd.seg.segread(enhanced_case.seg_path)
    labels = {n: label for label, n in segment_numbers(enhanced_case.result).items()}
    slice_of = {s.frame_number: i for i, s in enumerate(enhanced_case.volume.sources)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        reference = frame_source(item)
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        number = int(reference.ReferencedFrameNumber)
        expected = source.PerFrameFunctionalGroupsSequence[number - 1].PlanePositionSequence[0]
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in expected.ImagePositionPatient],
            atol=1e-4,
        )
        mask = enhanced_case.result.label_map[slice_of[number]] == labels[segment_of(item, seg)]
        np.testing.assert_array_equal(frame.astype(bool), mask)
    # read back by source frame, in the volume's order
    numbers = [s.frame_number for s in enhanced_case.volume.sources]
    assert all(n is not None for n in numbers)
    pixels = seg.get_pixels_by_source_frame(
        str(source.SOPInstanceUID),
        [int(n or 0) for n in numbers],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    lookup = np.zeros(256, dtype=np.uint8)
    for label, number in segment_numbers(enhanced_case.result).items():
        lookup[label] = number
    np.testing.assert_array_equal(pixels, lookup[enhanced_case.result.label_map])


def test_segment_codes_come_from_the_result(tmp_path: Path) -> None:
    """A private scheme is identified in the Coding Scheme Identification Sequence."""
    series = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    volume, sources = load(series.paths)
    private = Segment(
        1, "Thing", ANATOMICAL_STRUCTURE, Code("THING", "99LOCAL", "Thing"), color=(10, 20, 30)
    )
    label_map = np.zeros(volume.array.shape, dtype=np.uint8)
    label_map[1, 4:8, 4:8] = 1
    result = PipelineResult(label_map=label_map, segments=(private,))
    seg = build_segmentation(result, volume, sources, context(series.paths, tmp_path))
    assert seg is not None
    assert int(seg.NumberOfFrames) == 1
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == (
        "99LOCAL"
    )
    assert [i.CodingSchemeDesignator for i in seg.CodingSchemeIdentificationSequence] == ["99LOCAL"]


@pytest.mark.peers
def test_non_ascii_labels_on_an_ascii_source(tmp_path: Path) -> None:
    """A source without Specific Character Set, a segment named in German: the SEG
    and the SR switch to UTF-8 and stay valid."""
    series = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    volume, sources = load(series.paths)
    for ds in sources:
        del ds.SpecificCharacterSet
    label_map = np.zeros(volume.array.shape, dtype=np.uint8)
    label_map[1, 4:8, 4:8] = 1
    segment = dataclasses.replace(NODULE, label=1, name="Rundherd (Lunge, äußerer Rand)")
    volume_ml = Measurement(Code("118565006", "SCT", "Volume"), 0.05, Code("mL", "UCUM", "mL"), 1)
    result = PipelineResult(label_map=label_map, segments=(segment,), measurements=(volume_ml,))
    case = build_case(series.paths, result, tmp_path / "out", volume=volume, sources=sources)
    assert case.seg_path is not None and case.sr_path is not None
    for path in (case.seg_path, case.sr_path):
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert assert_valid(path) == []
    assert pydicom.dcmread(case.seg_path).SegmentSequence[0].SegmentLabel == segment.name
    # an ASCII result keeps the source's (absent) character set
    plain = dataclasses.replace(result, segments=(dataclasses.replace(segment, name="Nodule"),))
    seg = build_segmentation(plain, volume, sources, context(series.paths, tmp_path))
    assert seg is not None and "SpecificCharacterSet" not in seg
