"""Loading a series into a Volume: order, geometry, rescale, and every refusal."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.errors import VolumeError
from dicomnode.protocol import Volume
from dicomnode.runner.volume import load_series, load_series_datasets
from dicomnode.synthetic import (
    AIR_HU,
    LUNG_HU,
    WATER_HU,
    Phantom,
    Series,
    dx_projection,
    phantom_slice,
    rotation_about_axis,
    write_ct_series,
    write_dx_image,
    write_enhanced_ct,
    write_oblique_ct_series,
)
from tests.helpers import require_tool

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SLICES, SIZE, THICKNESS = 12, 32, 2.5
PIXEL = 400.0 / SIZE  # write_ct_series's default in-plane spacing


def expected_hu(slices: int = SLICES, size: int = SIZE) -> np.ndarray:
    """The phantom's HU, slice 0 at z = 0, as write_ct_series writes it."""
    z_center = (slices - 1) * THICKNESS / 2.0
    return np.stack(
        [
            phantom_slice(Phantom(), k * THICKNESS, size, size, PIXEL, z_center)
            for k in range(slices)
        ]
    ).astype(np.float32)


def read_all(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def sop_uids(volume: Volume) -> list[str]:
    return [s.sop_instance_uid for s in volume.sources]


@pytest.fixture
def series(tmp_path: Path) -> Callable[..., Series]:
    counter = iter(range(1000))

    def build(slices: int = SLICES, size: int = SIZE, **kwargs: Any) -> Series:
        out = tmp_path / f"series{next(counter)}"
        return write_ct_series(out, slices=slices, rows=size, columns=size, **kwargs)

    return build


# --- the normal case ----------------------------------------------------------------------------


def test_axial_series_geometry_hu_and_sources(series: Callable[..., Series]) -> None:
    written = series()
    volume = load_series(written.paths)

    assert volume.array.dtype == np.float32
    assert volume.array.shape == (SLICES, SIZE, SIZE)
    np.testing.assert_array_equal(volume.array, expected_hu())
    assert {AIR_HU, WATER_HU, LUNG_HU} == set(np.unique(volume.array).tolist())
    assert volume.spacing == pytest.approx((THICKNESS, PIXEL, PIXEL))
    half = (SIZE - 1) / 2.0 * PIXEL
    assert volume.origin == pytest.approx((-half, -half, 0.0), abs=1e-4)
    assert volume.row_direction == (1.0, 0.0, 0.0)
    assert volume.column_direction == (0.0, 1.0, 0.0)
    assert volume.slice_direction == (0.0, 0.0, 1.0)
    assert volume.modality == "CT"
    assert volume.study_instance_uid == written.study_uid
    assert volume.series_instance_uid == written.series_uid
    assert volume.frame_of_reference_uid
    assert sop_uids(volume) == written.sop_uids
    assert all(s.frame_number is None for s in volume.sources)
    assert all(s.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2" for s in volume.sources)
    assert volume.attributes["Modality"] == "CT"
    assert volume.attributes["BodyPartExamined"] == "CHEST"
    assert volume.attributes["SliceSpacingSource"] == "positions"
    assert volume.attributes["PixelSpacingSource"] == "PixelSpacing"
    assert volume.attributes["SliceOrder"] == "position"
    text = " ".join(volume.attributes.values())
    assert "PHANTOM" not in text  # never patient name or ID


def test_shuffled_series_loads_like_the_ordered_one(series: Callable[..., Series]) -> None:
    ordered = load_series(series().paths)
    numbers = list(range(1, SLICES + 1))
    random.Random(7).shuffle(numbers)
    for order in (list(reversed(range(1, SLICES + 1))), numbers):
        written = series(order=order)
        paths = list(written.paths)
        random.Random(11).shuffle(paths)
        volume = load_series(paths)
        np.testing.assert_array_equal(volume.array, ordered.array)
        assert volume.spacing == pytest.approx(ordered.spacing)
        assert volume.origin == pytest.approx(ordered.origin)
        assert volume.slice_direction == ordered.slice_direction
        assert sop_uids(volume) == written.sop_uids  # slice index order, not file order


def test_single_slice_takes_slice_thickness(series: Callable[..., Series]) -> None:
    written = series(slices=1)
    volume = load_series(written.paths)
    assert volume.array.shape == (1, SIZE, SIZE)
    assert volume.spacing == pytest.approx((THICKNESS, PIXEL, PIXEL))
    assert volume.attributes["SliceSpacingSource"] == "SliceThickness"
    assert volume.attributes["SliceOrder"] == "single"


def test_rescale_is_applied_per_slice(series: Callable[..., Series]) -> None:
    datasets = read_all(series().paths)
    for index, ds in enumerate(datasets):
        stored = ds.pixel_array.astype(np.int32) - 1024  # HU
        if index % 2:
            ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
            values = (stored + 1024) // 2
        else:
            ds.RescaleSlope, ds.RescaleIntercept = "1", "-2048"
            values = stored + 2048
        ds.PixelData = values.astype(np.uint16).tobytes()
    random.Random(3).shuffle(datasets)
    volume = load_series_datasets(datasets)
    np.testing.assert_array_equal(volume.array, expected_hu())


def test_slices_are_ordered_along_the_normal_not_along_z(series: Callable[..., Series]) -> None:
    datasets = read_all(series().paths)
    for ds in datasets:  # columns run to -y: the normal is -z
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "-1", "0"]
    volume = load_series_datasets(datasets)
    assert volume.slice_direction == pytest.approx((0.0, 0.0, -1.0))
    np.testing.assert_array_equal(volume.array, expected_hu()[::-1])
    assert volume.origin[2] == pytest.approx((SLICES - 1) * THICKNESS)
    assert volume.spacing[0] == pytest.approx(THICKNESS)


def test_oblique_series(tmp_path: Path) -> None:
    rotation = rotation_about_axis((1.0, 1.0, 0.3), 35.0)
    written = write_oblique_ct_series(
        tmp_path / "oblique",
        SLICES,
        SIZE,
        SIZE,
        rotation=rotation,
        order=list(reversed(range(1, SLICES + 1))),
    )
    paths = list(written.paths)
    random.Random(5).shuffle(paths)
    volume = load_series(paths)

    np.testing.assert_array_equal(volume.array, expected_hu())
    assert sop_uids(volume) == written.sop_uids
    assert volume.slice_direction == pytest.approx(tuple(rotation @ [0.0, 0.0, 1.0]), abs=1e-6)
    assert volume.row_direction == pytest.approx(tuple(rotation @ [1.0, 0.0, 0.0]), abs=1e-6)
    assert volume.column_direction == pytest.approx(tuple(rotation @ [0.0, 1.0, 0.0]), abs=1e-6)
    assert volume.spacing == pytest.approx((THICKNESS, PIXEL, PIXEL), abs=1e-4)
    half = (SIZE - 1) / 2.0 * PIXEL
    assert volume.origin == pytest.approx(tuple(rotation @ [-half, -half, 0.0]), abs=1e-3)


# --- refusals -----------------------------------------------------------------------------------


def test_missing_slice_is_reported_as_a_gap(series: Callable[..., Series]) -> None:
    paths = series().paths
    with pytest.raises(VolumeError) as caught:
        load_series(paths[:5] + paths[6:])
    message = str(caught.value)
    assert "slice spacing is not uniform" in message
    assert "expected 2.5 mm, found a 5.0 mm gap between positions 10.0 and 15.0 mm" in message
    assert "(missing slice?)" in message

    with pytest.raises(VolumeError, match=r"found a 7\.5 mm gap .*\(2 missing slices\?\)"):
        load_series(paths[:3] + paths[5:])


def test_irregular_spacing_is_refused_and_small_jitter_is_not(
    series: Callable[..., Series],
) -> None:
    datasets = read_all(series().paths)
    z = float(datasets[4].ImagePositionPatient[2])
    datasets[4].ImagePositionPatient[2] = f"{z + 0.005:.4f}"  # within 0.01 mm: accepted
    assert load_series_datasets(datasets).array.shape[0] == SLICES
    datasets[4].ImagePositionPatient[2] = f"{z + 1.0:.4f}"
    with pytest.raises(VolumeError, match=r"slice spacing is not uniform: expected 2\.5 mm"):
        load_series_datasets(datasets)


def test_duplicate_position_is_refused(series: Callable[..., Series]) -> None:
    datasets = read_all(series().paths)
    copy = pydicom.dcmread(series().paths[0])
    copy.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    copy.FrameOfReferenceUID = datasets[0].FrameOfReferenceUID
    with pytest.raises(VolumeError, match=r"duplicate slice position 0\.0 mm"):
        load_series_datasets([*datasets, copy])


def test_same_instance_twice_is_refused(series: Callable[..., Series]) -> None:
    paths = series().paths
    with pytest.raises(VolumeError, match="was given twice"):
        load_series([*paths, paths[3]])


def test_mixed_orientations_are_refused(series: Callable[..., Series]) -> None:
    datasets = read_all(series().paths)
    datasets[0].ImageOrientationPatient = ["1", "0.00001", "0", "0", "1", "0"]  # < 1e-4: same
    assert load_series_datasets(datasets).array.shape[0] == SLICES
    datasets[2].ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]  # a coronal localizer
    with pytest.raises(VolumeError, match="mixed orientations: 2 different"):
        load_series_datasets(datasets)


def test_different_sizes_are_refused(series: Callable[..., Series]) -> None:
    written = series()
    other = series(slices=1, size=16, series_uid=written.series_uid)
    with pytest.raises(VolumeError, match=r"differ in size.*1 of 16x16, 12 of 32x32"):
        load_series(written.paths + other.paths)


def test_two_series_are_refused(series: Callable[..., Series]) -> None:
    first, second = series(slices=3), series(slices=3)
    with pytest.raises(VolumeError, match="belong to 2 series"):
        load_series(first.paths + second.paths)


def test_missing_position_is_refused(series: Callable[..., Series]) -> None:
    datasets = read_all(series().paths)
    del datasets[3].ImagePositionPatient
    with pytest.raises(VolumeError, match="1 of 12 images lack ImagePositionPatient"):
        load_series_datasets(datasets)
    for ds in datasets:
        ds.pop("ImagePositionPatient", None)
    with pytest.raises(VolumeError, match="12 images without ImagePositionPatient"):
        load_series_datasets(datasets)


def test_sheared_stack_is_refused(series: Callable[..., Series]) -> None:
    datasets = read_all(series().paths)
    for k, ds in enumerate(datasets):  # gantry tilt: each slice shifted 0.5 mm in y
        ds.ImagePositionPatient[1] = f"{float(ds.ImagePositionPatient[1]) + 0.5 * k:.4f}"
    with pytest.raises(VolumeError, match=r"do not line up along the slice normal.*gantry tilt"):
        load_series_datasets(datasets)


def test_different_pixel_spacing_is_refused(series: Callable[..., Series]) -> None:
    datasets = read_all(series().paths)
    datasets[5].PixelSpacing = ["0.5", "0.5"]
    with pytest.raises(VolumeError, match="pixel spacing differs between slices"):
        load_series_datasets(datasets)


def test_colour_image_is_refused() -> None:
    with pytest.raises(VolumeError, match="colour images are not supported"):
        load_series([PYDICOM_FILES / "SC_rgb_rle.dcm"])


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="no images"):
        load_series([])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(VolumeError, match="cannot read"):
        load_series([junk])
    with pytest.raises(VolumeError, match="cannot decode the pixel data"):
        load_series([PYDICOM_FILES / "MR_truncated.dcm"])
    with pytest.raises(TypeError):
        load_series(str(junk))  # type: ignore[arg-type]


# --- other transfer syntaxes and kinds of object ------------------------------------------------


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_compressed_transfer_syntaxes_decode_like_native(name: str) -> None:
    native = load_series([PYDICOM_FILES / "MR_small.dcm"])
    compressed = load_series([PYDICOM_FILES / name])
    np.testing.assert_array_equal(compressed.array, native.array)
    assert compressed.spacing == native.spacing
    assert compressed.origin == native.origin
    assert compressed.array.shape == (1, 64, 64)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dx_image_is_one_slice_without_inversion(tmp_path: Path, photometric: str) -> None:
    written = write_dx_image(tmp_path / "dx.dcm", 96, 80, photometric=photometric)
    volume = load_series(written.paths)

    projection = dx_projection(96, 80).astype(np.float32)
    stored = projection if photometric == "MONOCHROME2" else 4095 - projection
    assert volume.array.shape == (1, 96, 80)
    np.testing.assert_array_equal(volume.array[0], stored)  # MONOCHROME1 left as stored
    assert volume.attributes["PhotometricInterpretation"] == photometric
    assert volume.attributes["ViewPosition"] == "PA"
    assert volume.attributes["PatientOrientation"] == "L\\F"
    assert volume.attributes["PixelSpacingSource"] == "ImagerPixelSpacing"
    assert volume.attributes["SliceSpacingSource"] == "none"
    assert volume.spacing == (1.0, 0.5, 0.5)
    assert volume.origin == (0.0, 0.0, 0.0)
    assert (volume.row_direction, volume.column_direction, volume.slice_direction) == (
        (1.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
        (0.0, 0.0, 1.0),
    )
    assert volume.modality == "DX"
    assert volume.sources[0].frame_number is None


def test_dx_without_any_pixel_spacing_says_so(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_dx_image(tmp_path / "dx.dcm", 32, 32).paths[0])
    del ds.ImagerPixelSpacing
    volume = load_series_datasets([ds])
    assert volume.spacing == (1.0, 1.0, 1.0)
    assert volume.attributes["PixelSpacingSource"] == "none"


def test_several_projection_images_are_not_stacked(tmp_path: Path) -> None:
    pa = write_dx_image(tmp_path / "pa.dcm", 32, 32)
    ap = write_dx_image(tmp_path / "ap.dcm", 32, 32, view_position="AP", series_uid=pa.series_uid)
    with pytest.raises(VolumeError, match="load projection images one at a time"):
        load_series(pa.paths + ap.paths)


def test_enhanced_ct_frames_are_sorted_by_position(tmp_path: Path) -> None:
    order = list(range(SLICES))
    random.Random(2).shuffle(order)  # frame k holds slice order[k]
    written = write_enhanced_ct(tmp_path / "enhanced.dcm", SLICES, SIZE, SIZE, frame_order=order)
    volume = load_series(written.paths)

    np.testing.assert_array_equal(volume.array, expected_hu())
    assert volume.spacing == pytest.approx((THICKNESS, PIXEL, PIXEL))
    assert volume.slice_direction == (0.0, 0.0, 1.0)
    assert [s.frame_number for s in volume.sources] == [order.index(k) + 1 for k in range(SLICES)]
    assert {s.sop_instance_uid for s in volume.sources} == set(written.sop_uids)
    assert volume.sources[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.2.1"
    assert volume.attributes["SliceOrder"] == "position"


def test_enhanced_ct_per_frame_rescale_overrides_shared(tmp_path: Path) -> None:
    written = write_enhanced_ct(tmp_path / "enhanced.dcm", SLICES, SIZE, SIZE)
    ds = pydicom.dcmread(written.paths[0])
    transformation = Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept = "1", "-1000"
    transformation.RescaleType = "HU"
    ds.PerFrameFunctionalGroupsSequence[3].PixelValueTransformationSequence = [transformation]
    volume = load_series_datasets([ds])
    expected = expected_hu()
    expected[3] += 24
    np.testing.assert_array_equal(volume.array, expected)


def test_multi_frame_without_geometry_keeps_frame_order(tmp_path: Path) -> None:
    order = list(reversed(range(SLICES)))
    written = write_enhanced_ct(tmp_path / "cine.dcm", SLICES, SIZE, SIZE, frame_order=order)
    ds = pydicom.dcmread(written.paths[0])
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
    del ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    volume = load_series_datasets([ds])

    np.testing.assert_array_equal(volume.array, expected_hu()[order])
    assert [s.frame_number for s in volume.sources] == list(range(1, SLICES + 1))
    assert volume.spacing == pytest.approx((1.0, PIXEL, PIXEL))
    assert volume.attributes["SliceOrder"] == "frames"
    assert volume.attributes["SliceSpacingSource"] == "none"
    assert volume.slice_direction == (0.0, 0.0, 1.0)


def test_rt_dose_grid_frame_offsets() -> None:
    ds = pydicom.dcmread(PYDICOM_FILES / "rtdose.dcm")
    volume = load_series([PYDICOM_FILES / "rtdose.dcm"])
    assert volume.array.shape == (15, 10, 10)
    assert volume.spacing == pytest.approx((5.0, 10.0, 10.0))
    assert volume.origin == pytest.approx(tuple(float(v) for v in ds.ImagePositionPatient))
    scaled = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(volume.array, scaled, rtol=1e-6)
    assert [s.frame_number for s in volume.sources] == list(range(1, 16))


# --- synthetic data stays valid -------------------------------------------------------------------


@pytest.mark.peers
def test_synthetic_objects_pass_dciodvfy(tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    files = [
        write_dx_image(tmp_path / "dx2.dcm", 32, 32).paths[0],
        write_dx_image(tmp_path / "dx1.dcm", 32, 32, photometric="MONOCHROME1").paths[0],
        write_enhanced_ct(tmp_path / "enhanced.dcm", 4, 16, 16, frame_order=[2, 0, 3, 1]).paths[0],
        write_oblique_ct_series(
            tmp_path / "oblique", 2, 16, 16, rotation=rotation_about_axis((0, 1, 1), 20)
        ).paths[1],
    ]
    for path in files:
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}:\n{report}"


# --- speed --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_large_series_loads_in_seconds(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "big", slices=256, rows=512, columns=512)
    paths = list(written.paths)
    random.Random(1).shuffle(paths)
    started = time.perf_counter()
    volume = load_series(paths)
    elapsed = time.perf_counter() - started
    assert volume.array.shape == (256, 512, 512)
    assert sop_uids(volume) == written.sop_uids
    assert elapsed < 15.0, f"256 slices of 512x512 took {elapsed:.1f} s"
