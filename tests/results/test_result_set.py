"""One result written as a whole (SEG, SR, overlays, parametric maps): the objects
agree on patient and study, each series has its own number, and the report names
the heatmaps of its findings."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from dicomnode.protocol import Code, Finding, Heatmap, PipelineResult, Volume
from dicomnode.results.overlay import HEAT_THRESHOLD
from dicomnode.results.sr import ILLUSTRATION, POINT_TRACKING_IDENTIFIER
from dicomnode.results.writer import DicomResultWriter
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import write_ct_series, write_dx_image

from .helpers import assert_sr_valid, assert_valid, context, dcentvfy

NODULE = Code("27925004", "SCT", "Nodule")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class ResultSet:
    volume: Volume
    result: PipelineResult
    paths: tuple[Path, ...]
    objects: list[Dataset]

    def of_class(self, uid: str) -> list[Dataset]:
        return [ds for ds in self.objects if ds.SOPClassUID == uid]

    @property
    def report(self) -> Dataset:
        (sr,) = self.of_class(SR)
        return sr


def with_patient_study_details(paths: list[Path]) -> None:
    """Give the sources the optional patient and study attributes a hospital's have."""
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientAge = "054Y"
        ds.PatientSize = "1.80"
        ds.PatientWeight = "80"
        ds.PatientComments = "none"
        ds.EthnicGroup = "X"
        ds.save_as(path)


def spot(shape: tuple[int, ...], slices: range, row: int, column: int) -> NDArray[np.float32]:
    heat = np.zeros(shape, dtype=np.float32)
    rows, columns = np.mgrid[: shape[1], : shape[2]]
    blob = np.exp(-((rows - row) ** 2 + (columns - column) ** 2) / 18.0).astype(np.float32)
    for index in slices:
        heat[index] = blob * (0.5 + 0.1 * (index - slices.start))
    return heat


def write(paths: list[Path], result: PipelineResult, out: Path, name: str) -> ResultSet:
    volume = load_series(paths)
    made = DicomResultWriter().write(result, volume, context(paths, out, name=name))
    written = tuple(o.path for o in made.objects)
    return ResultSet(volume, result, written, [pydicom.dcmread(p) for p in written])


@pytest.fixture(scope="module")
def ct_set(tmp_path_factory: pytest.TempPathFactory) -> ResultSet:
    """ct-lung's segments and measurements, with two findings that have heatmaps."""
    from pipelines.ct_lung import CTLungPipeline

    root = tmp_path_factory.mktemp("ct-set")
    series = write_ct_series(root / "ct", slices=24, rows=64, columns=64, patient_name="Müller^Jo")
    with_patient_study_details(list(series.paths))
    volume = load_series(series.paths)
    lung = CTLungPipeline().run(volume, "cpu")
    shape = volume.array.shape
    result = dataclasses.replace(
        lung,
        findings=(Finding(NODULE, 0.8, 0.5), Finding(PNEUMONIA, 0.3, 0.5)),
        heatmaps=(
            Heatmap(NODULE, spot(shape, range(10, 14), 24, 20)),
            Heatmap(PNEUMONIA, spot(shape, range(4, 6), 40, 44)),
        ),
    )
    return write(list(series.paths), result, root / "out", "ct-lung")


@pytest.fixture(scope="module")
def dx_set(tmp_path_factory: pytest.TempPathFactory) -> ResultSet:
    """A classifier's findings with heatmaps on a radiograph."""
    root = tmp_path_factory.mktemp("dx-set")
    series = write_dx_image(root / "dx.dcm", 64, 64)
    with_patient_study_details(list(series.paths))
    volume = load_series(series.paths)
    result = PipelineResult(
        findings=(Finding(NODULE, 0.9, 0.5), Finding(PNEUMONIA, 0.2, 0.5)),
        heatmaps=(
            Heatmap(NODULE, spot(volume.array.shape, range(0, 1), 20, 18)),
            Heatmap(PNEUMONIA, spot(volume.array.shape, range(0, 1), 44, 40)),
        ),
    )
    return write(list(series.paths), result, root / "out", "cxr-classify")


@pytest.fixture(params=["ct_set", "dx_set"])
def result_set(request: pytest.FixtureRequest) -> ResultSet:
    value: ResultSet = request.getfixturevalue(request.param)
    return value


@pytest.mark.peers
def test_dcentvfy_finds_the_objects_consistent(result_set: ResultSet) -> None:
    """dcentvfy over every object of the result: no errors, and no attribute that
    some objects have and others lack (PatientAge, PatientSize... in all or none)."""
    errors, warnings = dcentvfy(result_set.paths)
    assert errors == []
    assert warnings == []


def test_every_object_has_the_sources_patient_and_study(result_set: ResultSet) -> None:
    for ds in result_set.objects:
        assert (ds.PatientAge, ds.PatientSize, ds.PatientWeight) == ("054Y", 1.8, 80)
        assert (ds.PatientComments, ds.EthnicGroup) == ("none", "X")


def test_every_series_has_its_own_number(result_set: ResultSet) -> None:
    numbers: dict[str, set[int]] = defaultdict(set)
    for ds in result_set.objects:
        numbers[str(ds.SeriesInstanceUID)].add(int(ds.SeriesNumber))
    assert all(len(found) == 1 for found in numbers.values())
    flat = [next(iter(found)) for found in numbers.values()]
    assert len(set(flat)) == len(flat)


def test_the_report_names_each_findings_heatmaps(result_set: ResultSet) -> None:
    """The overlays and maps are the SR's evidence, and each finding's group
    references its own (Illustration of ROI)."""
    report = hd.sr.Comprehensive3DSR.from_dataset(result_set.report)
    evidence = {
        str(instance.ReferencedSOPInstanceUID)
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    heatmap_objects = result_set.of_class(SECONDARY_CAPTURE) + result_set.of_class(PARAMETRIC_MAP)
    assert heatmap_objects
    assert {str(ds.SOPInstanceUID) for ds in heatmap_objects} <= evidence
    groups = [
        group
        for group in report.ContentSequence
        if group.ValueType == "CONTAINER"
        for group in group.ContentSequence
        if any(i.ConceptNameCodeSequence[0].CodeValue == "121071" for i in group.ContentSequence)
    ]
    named: dict[str, set[str]] = {}
    for group in groups:
        finding = next(
            i.ConceptCodeSequence[0].CodeMeaning
            for i in group.ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue == "121071"
        )
        named[finding] = {
            str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for i in group.ContentSequence
            if i.ValueType == "IMAGE"
            and i.ConceptNameCodeSequence[0].CodeValue == ILLUSTRATION.value
        }
    for concept in (NODULE, PNEUMONIA):
        own = {
            str(ds.SOPInstanceUID)
            for ds in heatmap_objects
            if concept.meaning in str(ds.SeriesDescription)
        }
        assert own and named[concept.meaning] == own


def test_findings_are_placed_at_the_heat_peak(result_set: ResultSet) -> None:
    """Each finding's probability is INFERRED FROM a POINT at its heatmap's
    hottest pixel, on that slice's source image, in the form OHIF lists."""
    report = result_set.report
    container = next(i for i in report.ContentSequence if i.ValueType == "CONTAINER")
    for heatmap in result_set.result.heatmaps:
        group = next(
            g
            for g in container.ContentSequence
            if any(
                i.ConceptNameCodeSequence[0].CodeValue == "121071"
                and i.ConceptCodeSequence[0].CodeValue == heatmap.finding.value
                for i in g.ContentSequence
            )
        )
        identifier = next(
            i.TextValue
            for i in group.ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue == "112039"
        )
        assert identifier == POINT_TRACKING_IDENTIFIER
        (probability,) = [i for i in group.ContentSequence if i.ValueType == "NUM"]
        (point,) = [c for c in probability.ContentSequence if c.ValueType == "SCOORD"]
        assert (point.RelationshipType, point.GraphicType) == ("INFERRED FROM", "POINT")
        index, row, column = np.unravel_index(int(np.argmax(heatmap.array)), heatmap.array.shape)
        assert heatmap.array[index, row, column] > HEAT_THRESHOLD
        assert list(point.GraphicData) == [column + 0.5, row + 0.5]
        image = point.ContentSequence[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == result_set.volume.sources[index].sop_instance_uid


@pytest.mark.peers
def test_the_report_passes_dciodvfy_and_pixelmed(result_set: ResultSet, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    result_set.report.save_as(path, enforce_file_format=True)
    assert_sr_valid(path)


def test_heatmap_wording_follows_the_algorithm(ct_set: ResultSet, dx_set: ResultSet) -> None:
    """ct-lung runs no trained model: its heatmaps are "Automated"; cxr-classify's "AI"."""
    for result_set, label in ((ct_set, "Automated"), (dx_set, "AI")):
        for ds in result_set.of_class(SECONDARY_CAPTURE) + result_set.of_class(PARAMETRIC_MAP):
            assert str(ds.SeriesDescription).startswith(f"{label} heatmap ")
        for ds in result_set.of_class(SECONDARY_CAPTURE):
            assert str(ds.ImageComments).startswith(f"{label} heatmap of ")


def test_ct_heatmaps_are_also_parametric_maps(ct_set: ResultSet) -> None:
    """One float Parametric Map per heatmap, next to its overlay series, holding the
    heat of the slices that have some, with an identity real world value mapping."""
    maps = ct_set.of_class(PARAMETRIC_MAP)
    overlays = ct_set.of_class(SECONDARY_CAPTURE)
    assert len(maps) == 2
    for heatmap, pm in zip(ct_set.result.heatmaps, maps, strict=True):
        assert heatmap.finding.meaning in str(pm.SeriesDescription)
        overlay_numbers = {
            int(ds.SeriesNumber)
            for ds in overlays
            if heatmap.finding.meaning in str(ds.SeriesDescription)
        }
        assert overlay_numbers == {int(pm.SeriesNumber) - 1}
        assert "FloatPixelData" in pm and pm.BitsAllocated == 32
        assert pm.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert (float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)) == (
            1.0,
            0.0,
        )
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
        hot = [i for i in range(heatmap.array.shape[0]) if heatmap.array[i].max() > HEAT_THRESHOLD]
        assert int(pm.NumberOfFrames) == len(hot)
        frames = pm.pixel_array.reshape(len(hot), *heatmap.array.shape[1:])
        sources = [
            item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for item in pm.PerFrameFunctionalGroupsSequence
        ]
        expected = {ct_set.volume.sources[i].sop_instance_uid: heatmap.array[i] for i in hot}
        for frame, uid in zip(frames, sources, strict=True):
            np.testing.assert_allclose(frame, expected[uid], atol=1e-6)


@pytest.mark.peers
def test_parametric_maps_pass_dciodvfy(ct_set: ResultSet, tmp_path: Path) -> None:
    for index, pm in enumerate(ct_set.of_class(PARAMETRIC_MAP)):
        path = tmp_path / f"pm{index}.dcm"
        pm.save_as(path, enforce_file_format=True)
        assert_valid(path)


def test_radiographs_get_no_parametric_map(dx_set: ResultSet) -> None:
    """The Parametric Map IOD needs a frame of reference, which a DX lacks: its
    heatmaps travel as overlays only."""
    assert dx_set.of_class(PARAMETRIC_MAP) == []
    assert len(dx_set.of_class(SECONDARY_CAPTURE)) == 2
    assert dx_set.of_class(SEG) == []
