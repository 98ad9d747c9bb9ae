"""Heatmap overlays: Secondary Capture images over the source, valid and traceable."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.protocol import (
    ARTIFICIAL_INTELLIGENCE_CODE,
    Algorithm,
    Code,
    Finding,
    Heatmap,
    ModelInfo,
    PipelineResult,
    ResultContext,
    Volume,
)
from dicomnode.results.overlay import (
    HEAT_THRESHOLD,
    MAX_SLICES_PER_HEATMAP,
    build_overlays,
    select_slices,
)
from dicomnode.results.uids import derived_uid
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import write_ct_series, write_dx_image, write_enhanced_ct
from tests.helpers import require_tool

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
NODULE = Code("27925004", "SCT", "Nodule")
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDescription",
    "SpecificCharacterSet",
)


# --- helpers --------------------------------------------------------------------------------------


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for ``path``."""
    tool = require_tool("dciodvfy")
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def load(paths: Sequence[Path]) -> tuple[Volume, list[Dataset]]:
    """The volume and its source datasets in volume order."""
    volume = load_series(paths)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in paths)}
    return volume, [by_uid[s.sop_instance_uid] for s in volume.sources]


def blob(
    shape: tuple[int, ...], row: float, column: float, sigma: float, slices: Sequence[int]
) -> NDArray[np.float32]:
    """A Gaussian spot on ``slices``, cut to exactly 0 below 0.05."""
    rows, columns = np.mgrid[: shape[1], : shape[2]]
    spot = np.exp(-((rows - row) ** 2 + (columns - column) ** 2) / (2 * sigma**2))
    spot[spot < 0.05] = 0.0
    heat = np.zeros(shape, dtype=np.float32)
    heat[list(slices)] = spot
    return heat


def context(paths: Sequence[Path], tmp_path: Path, version: str = "1.2") -> ResultContext:
    return ResultContext(
        job_id=7,
        pipeline_name="cxr-demo",
        pipeline_version=version,
        source_files=tuple(paths),
        out_dir=tmp_path / "out",
        node_name="DICOMNODE",
        algorithm=Algorithm(family=ARTIFICIAL_INTELLIGENCE_CODE, trained_model=True),
    )


def result_with(*heatmaps: Heatmap) -> PipelineResult:
    return PipelineResult(
        findings=(Finding(PNEUMONIA, 0.87, 0.5),),
        heatmaps=heatmaps,
        models=(ModelInfo("cxr-net", "3", "0" * 64),),
    )


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def image_part(ds: Dataset, rows: int, columns: int) -> tuple[NDArray[np.uint8], int, int]:
    """(the image below the banner, enlargement factor, banner height)."""
    factor = int(ds.Columns) // columns
    assert int(ds.Columns) == factor * columns
    banner = int(ds.Rows) - factor * rows
    assert banner > 0
    pixels: NDArray[np.uint8] = ds.pixel_array
    return pixels[banner:], factor, banner


def enlarge(array: NDArray[np.float32], factor: int) -> NDArray[np.float32]:
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


# --- projection images ----------------------------------------------------------------------------


@pytest.mark.peers
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dx_overlay_is_valid_coloured_marked_and_in_the_study(
    tmp_path: Path, photometric: str
) -> None:
    written = write_dx_image(tmp_path / "src" / "dx.dcm", 80, 96, photometric=photometric)
    volume, sources = load(written.paths)
    heat = blob(volume.array.shape, 25, 30, 8, [0])
    overlays = build_overlays(
        result_with(Heatmap(PNEUMONIA, heat)), volume, sources, context(written.paths, tmp_path)
    )
    assert len(overlays) == 1
    path = save(overlays[0], tmp_path / "out" / "overlay.dcm")
    errors, _ = dciodvfy(path)
    assert not errors, "\n".join(errors)
    assert path.read_bytes()[:132] == b"\x00" * 128 + b"DICM"

    ds = dcmread(path)
    source = sources[0]
    assert ds.SOPClassUID == SC_CLASS
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == ("RGB", 3, 8)
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.BurnedInAnnotation == "YES"
    assert ds.SeriesDescription == "AI heatmap Pneumonia (cxr-demo 1.2)"
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions) == (
        "dicomnode",
        "cxr-demo",
        "1.2",
    )
    assert "0.870" in ds.ImageComments
    assert "cxr-net 3" in ds.DerivationDescription
    assert ds.ContentDate and ds.ContentTime
    # identity: the source's study and patient, a new series
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    for keyword in PATIENT_KEYWORDS:
        assert ds.get(keyword) == source.get(keyword), keyword
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SeriesInstanceUID == derived_uid(
        source.SeriesInstanceUID, "cxr-demo", "1.2", "overlay", "SCT", "233604007"
    )
    assert (ds.SeriesNumber, ds.InstanceNumber) == (9003, 1)
    assert ds.PatientOrientation == source.PatientOrientation
    assert "PixelSpacing" not in ds  # Imager Pixel Spacing is not in the patient
    reference = ds.SourceImageSequence[0]
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "ReferencedFrameNumber" not in reference
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    series = ds.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    image, factor, banner = image_part(ds, 80, 96)
    assert factor == 3  # 96 columns enlarged to at least 256
    red, green, blue = (image[..., c].astype(int) for c in range(3))
    big = enlarge(heat[0], factor)
    hot = big > HEAT_THRESHOLD
    assert hot.sum() > 100
    assert np.all(red[hot] > blue[hot]), "heat is drawn in colour"
    assert np.all(red[big >= 0.9] - blue[big >= 0.9] > 100)
    assert np.all((red == green)[~hot]) and np.all((green == blue)[~hot]), "grey elsewhere"
    # the grey follows the source: brighter where the source displays brighter
    shown = volume.array[0] if photometric == "MONOCHROME2" else 4095 - volume.array[0]
    correlation = np.corrcoef(enlarge(shown, factor)[~hot], green[~hot])[0, 1]
    assert correlation > 0.99
    # the banner: black with yellow text, above the image
    strip = ds.pixel_array[:banner].astype(int)
    yellow = (strip[..., 0] > 150) & (strip[..., 1] > 150) & (strip[..., 2] < 60)
    assert yellow.sum() > 100
    assert np.all(strip[..., 2] == 0)


def test_monochrome1_overlay_looks_like_monochrome2(tmp_path: Path) -> None:
    images = []
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        written = write_dx_image(tmp_path / photometric / "dx.dcm", 40, 48, photometric=photometric)
        volume, sources = load(written.paths)
        heat = blob(volume.array.shape, 10, 12, 4, [0])
        (ds,) = build_overlays(
            result_with(Heatmap(PNEUMONIA, heat)), volume, sources, context(written.paths, tmp_path)
        )
        images.append(ds.pixel_array.astype(int))
    assert images[0].shape == images[1].shape
    assert np.abs(images[0] - images[1]).max() <= 1


def test_without_a_window_the_volume_percentiles_are_used(tmp_path: Path) -> None:
    written = write_dx_image(tmp_path / "dx.dcm", 40, 48)
    volume, sources = load(written.paths)
    del sources[0].WindowCenter, sources[0].WindowWidth
    heat = blob(volume.array.shape, 10, 12, 4, [0])
    (ds,) = build_overlays(
        result_with(Heatmap(PNEUMONIA, heat)), volume, sources, context(written.paths, tmp_path)
    )
    image, factor, _ = image_part(ds, 40, 48)
    grey = image[..., 1][~(enlarge(heat[0], factor) > HEAT_THRESHOLD)]
    assert grey.min() == 0 and grey.max() == 255  # 1st..99th percentile spread to 0..255
    values = enlarge(volume.array[0], factor)[~(enlarge(heat[0], factor) > HEAT_THRESHOLD)]
    assert np.corrcoef(values, grey)[0, 1] > 0.95


@pytest.mark.peers
def test_non_ascii_patient_name_and_finding_survive(tmp_path: Path) -> None:
    name = "Müller^Jürgen"
    written = write_dx_image(tmp_path / "src" / "dx.dcm", 32, 32, patient_name=name)
    volume, sources = load(written.paths)
    heat = blob(volume.array.shape, 16, 16, 4, [0])
    (ds,) = build_overlays(
        result_with(Heatmap(PNEUMONIA, heat)), volume, sources, context(written.paths, tmp_path)
    )
    path = save(ds, tmp_path / "out" / "utf8.dcm")
    errors, _ = dciodvfy(path)
    assert not errors, "\n".join(errors)
    back = dcmread(path)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == name

    # A source without a character set: our own non-ASCII text switches to UTF-8.
    del sources[0].SpecificCharacterSet
    sources[0].PatientName = "DOE^JANE"
    effusion = Code("60046008", "SCT", "Épanchement pleural")
    (ds,) = build_overlays(
        PipelineResult(heatmaps=(Heatmap(effusion, heat),)),
        volume,
        sources,
        context(written.paths, tmp_path),
    )
    path = save(ds, tmp_path / "out" / "latin.dcm")
    errors, _ = dciodvfy(path)
    assert not errors, "\n".join(errors)
    back = dcmread(path)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert back.SeriesDescription == "AI heatmap Épanchement pleural (cxr-demo 1.2)"
    assert str(back.PatientName) == "DOE^JANE"


# --- volumes --------------------------------------------------------------------------------------


@pytest.mark.peers
def test_ct_overlay_per_slice_with_heat(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "ct", slices=6, rows=32, columns=32)
    volume, sources = load(written.paths)
    hot_slices = [1, 2, 4]
    heat = blob(volume.array.shape, 12, 20, 3, hot_slices)
    heat[5, 0, 0] = HEAT_THRESHOLD  # not above the threshold: no overlay
    overlays = build_overlays(
        result_with(Heatmap(NODULE, heat)), volume, sources, context(written.paths, tmp_path)
    )
    assert len(overlays) == 3
    assert len({ds.SeriesInstanceUID for ds in overlays}) == 1
    assert len({ds.SOPInstanceUID for ds in overlays}) == 3
    for index, ds in zip(hot_slices, overlays, strict=True):
        reference = ds.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == volume.sources[index].sop_instance_uid
        assert reference.ReferencedSOPInstanceUID == written.sop_uids[index]
        assert ds.InstanceNumber == index + 1
        assert ds.StudyInstanceUID == written.study_uid
        assert ds.SeriesDescription == "AI heatmap Nodule (cxr-demo 1.2)"
        assert "ImageComments" in ds and "Probability" not in ds.ImageComments
        assert list(ds.PatientOrientation) == ["L", "P"]
        factor = int(ds.Columns) // 32
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(
            [volume.spacing[1] / factor, volume.spacing[2] / factor]
        )
        path = save(ds, tmp_path / "out" / f"ct_{index}.dcm")
        errors, _ = dciodvfy(path)
        assert not errors, "\n".join(errors)


@pytest.mark.peers
def test_multi_frame_source_references_the_frame(tmp_path: Path) -> None:
    written = write_enhanced_ct(tmp_path / "enhanced.dcm", 4, 32, 32, frame_order=[2, 0, 3, 1])
    volume, sources = load(written.paths)
    heat = blob(volume.array.shape, 16, 16, 4, [0, 3])
    overlays = build_overlays(
        result_with(Heatmap(NODULE, heat)), volume, sources, context(written.paths, tmp_path)
    )
    frames = [ds.SourceImageSequence[0].ReferencedFrameNumber for ds in overlays]
    # slice 0 (z = 0) is stored in frame 2, slice 3 in frame 3
    assert frames == [2, 3] == [volume.sources[i].frame_number for i in (0, 3)]
    for ds in overlays:
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == written.sop_uids[0]
        errors, _ = dciodvfy(save(ds, tmp_path / "out" / f"{ds.InstanceNumber}.dcm"))
        assert not errors, "\n".join(errors)


def test_at_most_max_slices_per_heatmap_the_hottest() -> None:
    count = MAX_SLICES_PER_HEATMAP + 6
    heat = np.zeros((count, 4, 4), dtype=np.float32)
    heat[:, 1, 1] = np.linspace(0.2, 0.9, count)
    heat[[3, 10]] = 0.0
    chosen = select_slices(heat)
    assert len(chosen) == MAX_SLICES_PER_HEATMAP
    assert chosen == sorted(chosen)
    assert chosen == [i for i in range(count) if i not in (3, 10)][-MAX_SLICES_PER_HEATMAP:]
    assert select_slices(heat[:5]) == [0, 1, 2, 4]


# --- identity and edge cases ----------------------------------------------------------------------


def test_uids_are_deterministic_and_change_with_the_version(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    volume, sources = load(written.paths)
    result = result_with(
        Heatmap(PNEUMONIA, blob(volume.array.shape, 8, 8, 3, [0, 1])),
        Heatmap(NODULE, blob(volume.array.shape, 4, 4, 2, [2])),
    )

    def uids(version: str) -> list[tuple[str, str]]:
        built = build_overlays(result, volume, sources, context(written.paths, tmp_path, version))
        return [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in built]

    first, again, other = uids("1.2"), uids("1.2"), uids("1.3")
    assert len(first) == 3
    assert first == again
    assert len({series for series, _ in first}) == 2, "one series per heatmap"
    assert not {uid for pair in first for uid in pair} & {uid for pair in other for uid in pair}


def test_no_heat_no_overlay(tmp_path: Path) -> None:
    written = write_dx_image(tmp_path / "dx.dcm", 16, 16)
    volume, sources = load(written.paths)
    ctx = context(written.paths, tmp_path)
    weak = np.full(volume.array.shape, 0.05, dtype=np.float32)
    empty = np.zeros(volume.array.shape, dtype=np.float32)
    assert build_overlays(result_with(Heatmap(PNEUMONIA, empty)), volume, sources, ctx) == []
    assert build_overlays(result_with(Heatmap(PNEUMONIA, weak)), volume, sources, ctx) == []
    assert build_overlays(PipelineResult(), volume, sources, ctx) == []


def test_inputs_that_do_not_match_are_refused(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "ct", slices=2, rows=16, columns=16)
    volume, sources = load(written.paths)
    ctx = context(written.paths, tmp_path)
    heat = blob(volume.array.shape, 8, 8, 3, [0])
    result = result_with(Heatmap(PNEUMONIA, heat))
    with pytest.raises(ValueError, match="volume order"):
        build_overlays(result, volume, sources[:1], ctx)
    with pytest.raises(ValueError, match="sources\\[0\\]"):
        build_overlays(result, volume, sources[::-1], ctx)
    with pytest.raises(ValueError, match="two heatmaps"):
        build_overlays(
            result_with(Heatmap(PNEUMONIA, heat), Heatmap(PNEUMONIA, heat)), volume, sources, ctx
        )
    with pytest.raises(ValueError, match="shape"):
        build_overlays(result_with(Heatmap(PNEUMONIA, heat[:1])), volume, sources, ctx)
