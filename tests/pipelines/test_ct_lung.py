"""The ``ct-lung`` pipeline on the synthetic phantom, on pydicom's real CT samples, and refusing.

What the real samples show (rendered and looked at while writing these tests):

* ``CT_small.dcm``: a 128x128 zoomed reconstruction (85 mm field of view) of
  the posterior chest at a thoracic vertebra: vertebral body and spinal canal
  in the middle, the descending aorta to the image's upper right (patient
  left), and the posterior part of both lungs, with vessels, in the upper
  left and upper right, cut by the image edges. There is no air outside the
  patient in the image. Right: body everywhere except the lungs, right lung
  in the image's left half, left lung in the right half.
* ``693_J2KI.dcm``: a lossy JPEG 2000 axial head CT near the vertex (skull and
  brain in a circular reconstruction, head holder at both sides). Right:
  body, no lung.
* ``J2K_pixelrep_mismatch.dcm``: an axial head CT at the skull base (orbits
  roof, frontal sinuses full of air, mastoid air cells, posterior fossa).
  Right: body, no lung; the air of the sinuses and mastoids is not lung.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from numpy.typing import NDArray

from dicomnode.protocol import Pipeline, PipelineResult, SliceSource, Volume
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import Phantom, write_ct_series
from pipelines.ct_lung import CTLungPipeline

BODY, RIGHT_LUNG, LEFT_LUNG, AIRWAY = 1, 2, 3, 4
SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"
VOLUME_TOLERANCE = 0.02  # measured lung volume within 2 % of the analytic one


@pytest.fixture(scope="module")
def phantom_volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """The phantom, 96 slices of 2.5 mm and 2.5 mm pixels: both lungs inside the scan."""
    series = write_ct_series(
        tmp_path_factory.mktemp("phantom"), slices=96, rows=160, columns=160, slice_thickness=2.5
    )
    return load_series(series.paths)


@pytest.fixture(scope="module")
def phantom_result(phantom_volume: Volume) -> PipelineResult:
    pipeline = CTLungPipeline()
    pipeline.load("cpu")
    return pipeline.run(phantom_volume, "cpu")


def measurement(result: PipelineResult, meaning: str, label: int | None) -> float:
    matches = [
        m.value
        for m in result.measurements
        if m.concept.meaning == meaning and m.segment_label == label
    ]
    assert len(matches) == 1, f"{meaning} of {label}: {matches}"
    return matches[0]


def patient_x(volume: Volume) -> NDArray[np.float64]:
    """Patient x (mm) of every voxel, from the volume's geometry."""
    k, i, j = np.indices(volume.array.shape, dtype=np.float64)
    return np.asarray(
        volume.origin[0]
        + k * volume.spacing[0] * volume.slice_direction[0]
        + i * volume.spacing[1] * volume.column_direction[0]
        + j * volume.spacing[2] * volume.row_direction[0],
        dtype=np.float64,
    )


def make_volume(array: NDArray[np.float32], **geometry: object) -> Volume:
    """A CT :class:`Volume` of ``array`` (HU) with axial geometry unless given."""
    fields: dict[str, object] = {
        "spacing": (2.5, 2.5, 2.5),
        "origin": (0.0, 0.0, 0.0),
        "row_direction": (1.0, 0.0, 0.0),
        "column_direction": (0.0, 1.0, 0.0),
        "slice_direction": (0.0, 0.0, 1.0),
        "modality": "CT",
    }
    fields.update(geometry)
    return Volume(
        array=array.astype(np.float32),
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        frame_of_reference_uid="1.2.3.5",
        sources=tuple(
            SliceSource(f"1.2.3.4.{n}", "1.2.840.10008.5.1.4.1.1.2") for n in range(len(array))
        ),
        **fields,  # type: ignore[arg-type]
    )


def airway_phantom(
    shape: tuple[int, int, int] = (80, 160, 160), spacing: float = 2.5, seed: int = 0
) -> tuple[Volume, dict[str, NDArray[np.bool_]]]:
    """The phantom of :mod:`dicomnode.synthetic` with a trachea, main bronchi and noise.

    The trachea (radius 9 mm) runs down the midline from the first cranial
    slice to the carina, where two main bronchi (radius 6 mm) go into the
    lungs; all air is -1000 HU, lung -850 HU, soft tissue 0 HU, plus Gaussian
    noise of 15 HU. Returns the volume and the true masks.
    """
    phantom = Phantom()
    slices, rows, columns = shape
    k, i, j = np.indices(shape, dtype=np.float64)
    z = k * spacing  # slice_direction +z: the last slice is the most cranial
    y = (i - (rows - 1) / 2.0) * spacing
    x = (j - (columns - 1) / 2.0) * spacing
    z_centre = (slices - 1) * spacing / 2.0
    bx, by = phantom.body_radii
    a, b, c = phantom.lung_radii
    body = (x / bx) ** 2 + (y / by) ** 2 <= 1.0
    lungs = {
        side: ((x - sign * phantom.lung_offset_x) / a) ** 2
        + (y / b) ** 2
        + ((z - z_centre) / c) ** 2
        <= 1.0
        for side, sign in (("right", -1.0), ("left", 1.0))
    }
    carina = np.array([0.0, 0.0, z_centre + 40.0])
    trachea = (x**2 + y**2 <= 9.0**2) & (z >= carina[2])
    airway = trachea.copy()
    for sign in (-1.0, 1.0):
        end = np.array([sign * 60.0, 0.0, z_centre + 10.0])
        airway |= _tube(x, y, z, carina, end, 6.0)
    hu = np.where(body, 0.0, -1000.0)
    hu[lungs["right"] | lungs["left"]] = -850.0
    hu[airway & body] = -1000.0
    hu += np.random.default_rng(seed).normal(0.0, 15.0, shape)
    origin = (-(columns - 1) / 2.0 * spacing, -(rows - 1) / 2.0 * spacing, 0.0)
    volume = make_volume(hu.astype(np.float32), spacing=(spacing,) * 3, origin=origin)
    return volume, {"trachea": trachea, "airway": airway, **lungs}


def _tube(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    z: NDArray[np.float64],
    start: NDArray[np.float64],
    end: NDArray[np.float64],
    radius: float,
) -> NDArray[np.bool_]:
    axis = end - start
    length2 = float(axis @ axis)
    t = ((x - start[0]) * axis[0] + (y - start[1]) * axis[1] + (z - start[2]) * axis[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    dx, dy, dz = x - start[0] - t * axis[0], y - start[1] - t * axis[1], z - start[2] - t * axis[2]
    inside: NDArray[np.bool_] = dx**2 + dy**2 + dz**2 <= radius**2
    return inside


# --- the phantom -------------------------------------------------------------------------


def test_is_a_pipeline() -> None:
    pipeline = CTLungPipeline()
    assert isinstance(pipeline, Pipeline)
    assert (pipeline.name, pipeline.version) == ("ct-lung", "1.0.0")
    spec = pipeline.input
    assert spec.modalities == frozenset({"CT"}) and spec.min_slices == 16
    assert spec.field_of_view_mm == (200.0, 800.0) and "CHEST" in spec.body_parts


def test_lung_volumes_match_the_phantom(
    phantom_volume: Volume, phantom_result: PipelineResult
) -> None:
    truth = Phantom().lung_volume_ml()
    assert phantom_result.label_map is not None
    for label in (RIGHT_LUNG, LEFT_LUNG):
        assert measurement(phantom_result, "Volume", label) == pytest.approx(
            truth, rel=VOLUME_TOLERANCE
        )
        voxels = int((phantom_result.label_map == label).sum())
        assert voxels * phantom_volume.voxel_volume_ml == pytest.approx(truth, rel=VOLUME_TOLERANCE)
    assert measurement(phantom_result, "Volume", None) == pytest.approx(
        2 * truth, rel=VOLUME_TOLERANCE
    )


def test_right_lung_is_at_negative_patient_x(
    phantom_volume: Volume, phantom_result: PipelineResult
) -> None:
    x = patient_x(phantom_volume)
    offset = Phantom().lung_offset_x
    right = x[phantom_result.label_map == RIGHT_LUNG]
    left = x[phantom_result.label_map == LEFT_LUNG]
    assert right.mean() == pytest.approx(-offset, abs=2.0) and right.max() < 0
    assert left.mean() == pytest.approx(offset, abs=2.0) and left.min() > 0


def test_body_matches_the_elliptic_cylinder(
    phantom_volume: Volume, phantom_result: PipelineResult
) -> None:
    bx, by = Phantom().body_radii
    length = phantom_volume.array.shape[0] * phantom_volume.spacing[0]
    analytic_ml = np.pi * bx * by * length / 1000.0
    assert phantom_result.label_map is not None
    inside = int((phantom_result.label_map > 0).sum()) * phantom_volume.voxel_volume_ml
    assert inside == pytest.approx(analytic_ml, rel=0.01)


def test_result_is_in_the_volume_grid(
    phantom_volume: Volume, phantom_result: PipelineResult
) -> None:
    assert phantom_result.label_map is not None
    assert phantom_result.label_map.shape == phantom_volume.array.shape
    assert phantom_result.label_map.dtype == np.uint8
    phantom_result.check_grid(phantom_volume)
    assert [s.label for s in phantom_result.segments] == [BODY, RIGHT_LUNG, LEFT_LUNG]
    assert [s.type.value for s in phantom_result.segments] == ["38266002", "3341006", "44029006"]
    assert all(s.category.value == "91723000" and s.color for s in phantom_result.segments)
    assert phantom_result.models == ()


def test_density_and_emphysema_index(phantom_result: PipelineResult) -> None:
    for label in (RIGHT_LUNG, LEFT_LUNG, None):
        assert measurement(phantom_result, "Attenuation Coefficient", label) == pytest.approx(
            -850.0
        )
        assert measurement(phantom_result, "Low attenuation area below -950 HU", label) == 0.0
    units = {m.concept.value: m.unit.value for m in phantom_result.measurements}
    assert units == {"118565006": "mL", "112031": "[hnsf'U]", "LAA950": "%"}
    assert "Right lung 145" in phantom_result.summary and "left lung 145" in phantom_result.summary


def test_sides_follow_the_row_direction_not_the_image(phantom_volume: Volume) -> None:
    """The same patient stored with the image mirrored (row direction -x)."""
    columns = phantom_volume.array.shape[2]
    x0, y0, z0 = phantom_volume.origin
    origin = (x0 + (columns - 1) * phantom_volume.spacing[2], y0, z0)
    mirrored = dataclasses.replace(
        phantom_volume,
        array=np.ascontiguousarray(phantom_volume.array[:, :, ::-1]),
        origin=origin,
        row_direction=(-1.0, 0.0, 0.0),
    )
    result = CTLungPipeline().run(mirrored, "cpu")
    assert result.label_map is not None
    x = patient_x(mirrored)
    assert x[result.label_map == RIGHT_LUNG].max() < 0 < x[result.label_map == LEFT_LUNG].min()
    # and in the image, the right lung is now on the right-hand side
    assert np.nonzero(result.label_map == RIGHT_LUNG)[2].min() > columns // 2


def test_lungs_cut_by_the_scan_range(tmp_path: Path) -> None:
    """64 slices of 2.5 mm cover 160 of the 180 mm of each lung."""
    volume = load_series(write_ct_series(tmp_path, slices=64, rows=128, columns=128).paths)
    result = CTLungPipeline().run(volume, "cpu")
    a, b, c = Phantom().lung_radii
    h = 64 * 2.5 / 2.0  # the ellipsoid between z = -h and +h
    truth = np.pi * a * b * (2 * h - 2 * h**3 / (3 * c**2)) / 1000.0
    for label in (RIGHT_LUNG, LEFT_LUNG):
        assert measurement(result, "Volume", label) == pytest.approx(truth, rel=VOLUME_TOLERANCE)
    assert "volumes cover the imaged part only" in result.summary


def test_touching_lungs_are_split_at_the_midline(tmp_path: Path) -> None:
    """Lungs 100 mm apart with 55 mm radii overlap: one component, cut at x = 0."""
    series = write_ct_series(
        tmp_path, slices=96, rows=160, columns=160, phantom=Phantom(lung_offset_x=50.0)
    )
    volume = load_series(series.paths)
    result = CTLungPipeline().run(volume, "cpu")
    assert result.label_map is not None
    x = patient_x(volume)
    assert x[result.label_map == RIGHT_LUNG].max() < 0 < x[result.label_map == LEFT_LUNG].min()
    union_ml = int((volume.array == -850).sum()) * volume.voxel_volume_ml
    right = measurement(result, "Volume", RIGHT_LUNG)
    left = measurement(result, "Volume", LEFT_LUNG)
    assert right == pytest.approx(left, rel=0.01)
    assert right + left == pytest.approx(union_ml, rel=VOLUME_TOLERANCE)


def test_coronal_stack(phantom_volume: Volume) -> None:
    """The phantom resliced coronally: rows run from head to feet, slices along +y."""
    axial = phantom_volume
    coronal_array = np.ascontiguousarray(axial.array.transpose(1, 0, 2)[:, ::-1, :])
    top = axial.origin[2] + (axial.array.shape[0] - 1) * axial.spacing[0]
    coronal = make_volume(
        coronal_array,
        spacing=(axial.spacing[1], axial.spacing[0], axial.spacing[2]),
        origin=(axial.origin[0], axial.origin[1], top),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 0.0, -1.0),
        slice_direction=(0.0, 1.0, 0.0),
    )
    result = CTLungPipeline().run(coronal, "cpu")
    assert result.label_map is not None
    x = patient_x(coronal)
    assert x[result.label_map == RIGHT_LUNG].max() < 0 < x[result.label_map == LEFT_LUNG].min()
    for label in (RIGHT_LUNG, LEFT_LUNG):
        assert measurement(result, "Volume", label) == pytest.approx(
            Phantom().lung_volume_ml(), rel=VOLUME_TOLERANCE
        )


def test_air_only_gives_an_empty_result() -> None:
    air = np.full((4, 64, 64), -1000.0, dtype=np.float32)
    result = CTLungPipeline().run(make_volume(air), "cpu")
    assert result.label_map is not None and not result.label_map.any()
    assert result.segments == () and result.measurements == ()
    assert result.summary == "No body found in the volume."


def test_trachea_and_bronchi_become_airway() -> None:
    volume, truth = airway_phantom()
    result = CTLungPipeline().run(volume, "cpu")
    labels = result.label_map
    assert labels is not None
    assert AIRWAY in {s.label for s in result.segments}
    trachea = truth["trachea"]
    assert (labels[trachea] == AIRWAY).mean() > 0.95
    x = patient_x(volume)
    assert x[labels == RIGHT_LUNG].max() < 0 < x[labels == LEFT_LUNG].min()
    for side, label in (("right", RIGHT_LUNG), ("left", LEFT_LUNG)):
        lung = truth[side] & ~truth["airway"]
        found = labels == label
        dice = 2 * (found & lung).sum() / (found.sum() + lung.sum())
        assert dice > 0.97, f"{side} lung Dice {dice:.3f}"
        true_ml = lung.sum() * volume.voxel_volume_ml
        assert measurement(result, "Volume", label) == pytest.approx(true_ml, rel=0.03)
    assert "Trachea and central bronchi are excluded" in result.summary


def test_emphysematous_lungs_keep_their_airways_apart() -> None:
    """Lungs of -945 +- 40 HU (45 % below -950): the airway grown at -950 HU leaks into
    them, the stricter -980 HU gives the airways, and %LAA-950 is measured."""
    volume, truth = airway_phantom()
    parenchyma = (truth["right"] | truth["left"]) & ~truth["airway"]
    array = volume.array.copy()
    noise = np.random.default_rng(1).normal(0.0, 40.0, int(parenchyma.sum()))
    array[parenchyma] = -945.0 + noise
    result = CTLungPipeline().run(dataclasses.replace(volume, array=array), "cpu")
    assert [s.label for s in result.segments] == [BODY, RIGHT_LUNG, LEFT_LUNG, AIRWAY]
    truth_laa = 100.0 * float((array[parenchyma] < -950.0).mean())
    measured_laa = measurement(result, "Low attenuation area below -950 HU", None)
    assert measured_laa == pytest.approx(truth_laa, abs=1.0)
    assert measurement(result, "Attenuation Coefficient", None) == pytest.approx(-945.0, abs=3.0)


# --- pydicom's real CT samples -------------------------------------------------------------


def sample(name: str) -> Volume:
    return load_series([SAMPLES / name])


def test_ct_small_chest_has_both_lungs() -> None:
    volume = sample("CT_small.dcm")
    result = CTLungPipeline().run(volume, "cpu")
    labels = result.label_map
    assert labels is not None and labels.shape == (1, 128, 128)
    assert (labels > 0).all(), "the whole zoomed image is inside the patient"
    right_columns = np.nonzero(labels[0] == RIGHT_LUNG)[1]
    left_columns = np.nonzero(labels[0] == LEFT_LUNG)[1]
    assert right_columns.max() < 64 <= left_columns.min()
    for label in (RIGHT_LUNG, LEFT_LUNG):
        assert 2.5 < measurement(result, "Volume", label) < 6.0
        assert -850.0 < measurement(result, "Attenuation Coefficient", label) < -700.0
    # the spinal canal, vertebra and aorta in the middle and upper right stay body
    assert labels[0, 40:80, 50:80].max() == BODY
    assert "volumes cover the imaged part only" in result.summary


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_head_slices_have_a_body_and_no_lung(name: str) -> None:
    volume = sample(name)
    result = CTLungPipeline().run(volume, "cpu")
    labels = result.label_map
    assert labels is not None
    assert set(np.unique(labels).tolist()) == {0, BODY}
    assert [s.label for s in result.segments] == [BODY]
    assert result.measurements == ()
    assert labels[0, 256, 256] == BODY and labels[0, 0, 0] == 0
    area_cm2 = (labels == BODY).sum() * volume.spacing[1] * volume.spacing[2] / 100.0
    assert 150.0 < area_cm2 < 400.0, "a head's cross-section"
    assert "no lungs found" in result.summary


# --- refusing -------------------------------------------------------------------------------


def test_refuses_other_modalities(phantom_volume: Volume) -> None:
    with pytest.raises(ValueError, match="needs a CT volume, got modality 'MR'"):
        CTLungPipeline().run(dataclasses.replace(phantom_volume, modality="MR"), "cpu")


def test_refuses_values_that_are_not_hounsfield_units(phantom_volume: Volume) -> None:
    stored = phantom_volume.array + 1024.0  # rescale intercept not applied
    with pytest.raises(ValueError, match="do not look like Hounsfield units"):
        CTLungPipeline().run(dataclasses.replace(phantom_volume, array=stored), "cpu")
    normalised = (phantom_volume.array + 1024.0) / 4095.0
    with pytest.raises(ValueError, match="do not look like Hounsfield units"):
        CTLungPipeline().run(dataclasses.replace(phantom_volume, array=normalised), "cpu")


def test_refuses_non_finite_values(phantom_volume: Volume) -> None:
    broken = phantom_volume.array.copy()
    broken[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        CTLungPipeline().run(dataclasses.replace(phantom_volume, array=broken), "cpu")


def test_refuses_unknown_spacing(phantom_volume: Volume) -> None:
    attributes = {**phantom_volume.attributes, "PixelSpacingSource": "none"}
    with pytest.raises(ValueError, match="PixelSpacingSource"):
        CTLungPipeline().run(dataclasses.replace(phantom_volume, attributes=attributes), "cpu")


# --- GPU ------------------------------------------------------------------------------------


@pytest.fixture
def cuda() -> Iterator[str]:
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    yield "cuda"


@pytest.mark.gpu
def test_gpu_gives_the_cpu_result(cuda: str) -> None:
    volume, _ = airway_phantom()
    pipeline = CTLungPipeline()
    pipeline.load(cuda)
    on_gpu = pipeline.run(volume, cuda)
    on_cpu = pipeline.run(volume, "cpu")
    assert on_gpu.label_map is not None and on_cpu.label_map is not None
    assert np.array_equal(on_gpu.label_map, on_cpu.label_map)
    for gpu, cpu in zip(on_gpu.measurements, on_cpu.measurements, strict=True):
        assert (gpu.concept, gpu.segment_label) == (cpu.concept, cpu.segment_label)
        assert gpu.value == pytest.approx(cpu.value, rel=1e-4, abs=1e-3)
