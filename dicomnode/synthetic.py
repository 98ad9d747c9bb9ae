"""Synthetic DICOM series with known content, for tests, benchmarks and demos.

The CT phantom is a water-filled elliptical body (0 HU) in air (-1000 HU)
holding two ellipsoidal lungs (-850 HU), so later stages can check what they
measure against volumes known in advance. Every file is a complete CT Image
Storage instance that DICOM validators accept.

The same phantom also comes as an oblique series
(:func:`write_oblique_ct_series`), one Enhanced CT multi-frame instance
(:func:`write_enhanced_ct`) and a Digital X-Ray chest radiograph
(:func:`write_dx_image`), each valid for ``dciodvfy`` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

_DX_VIEWS = {"PA": codes.SCT.PosteroAnterior, "AP": codes.SCT.AnteroPosterior}

AIR_HU = -1000
WATER_HU = 0
LUNG_HU = -850


@dataclass(frozen=True)
class Phantom:
    """Geometry of the CT phantom, in millimetres (patient coordinates)."""

    body_radii: tuple[float, float] = (160.0, 110.0)
    lung_radii: tuple[float, float, float] = (55.0, 70.0, 90.0)
    lung_offset_x: float = 75.0

    def lung_volume_ml(self) -> float:
        """True volume of one lung (an ellipsoid) in millilitres."""
        a, b, c = self.lung_radii
        return 4.0 / 3.0 * np.pi * a * b * c / 1000.0


@dataclass(frozen=True)
class Series:
    """What :func:`write_ct_series` wrote."""

    paths: list[Path]
    study_uid: str
    series_uid: str
    sop_uids: list[str]


def phantom_slice(
    phantom: Phantom, z: float, rows: int, columns: int, spacing: float, z_center: float
) -> NDArray[np.int16]:
    """Hounsfield units of one axial slice at height ``z`` (mm)."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    x = (x - (columns - 1) / 2.0) * spacing
    y = (y - (rows - 1) / 2.0) * spacing
    hu = np.full((rows, columns), AIR_HU, dtype=np.int16)
    bx, by = phantom.body_radii
    hu[(x / bx) ** 2 + (y / by) ** 2 <= 1.0] = WATER_HU
    a, b, c = phantom.lung_radii
    dz = ((z - z_center) / c) ** 2
    if dz <= 1.0:
        for side in (-1.0, 1.0):
            lx = x - side * phantom.lung_offset_x
            hu[(lx / a) ** 2 + (y / b) ** 2 + dz <= 1.0] = LUNG_HU
    return hu


def write_ct_series(
    out_dir: Path,
    slices: int = 64,
    rows: int = 128,
    columns: int = 128,
    *,
    spacing: float | None = None,
    slice_thickness: float = 2.5,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "PHANTOM^CT",
    patient_id: str = "PHANTOM-001",
    accession: str = "ACC0001",
    phantom: Phantom | None = None,
    order: Sequence[int] | None = None,
) -> Series:
    """Write an axial CT series of the phantom, one file per slice.

    Parameters
    ----------
    out_dir : Path
        Created when missing; files are named ``ct_0000.dcm`` and so on.
    slices, rows, columns : int
        Size of the volume.
    spacing : float, optional
        In-plane pixel spacing in mm; default fits a 400 mm field of view.
    slice_thickness : float
        Slice thickness and spacing in mm.
    study_uid, series_uid : str, optional
        Generated when not given.
    patient_name, patient_id, accession : str
        Patient and study identification.
    phantom : Phantom, optional
        The geometry; default :class:`Phantom`.
    order : sequence of int, optional
        InstanceNumber assignment per slice index (to test that readers sort
        by position, not by number).

    Returns
    -------
    Series
        Paths and UIDs of what was written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    phantom = phantom or Phantom()
    spacing = spacing if spacing is not None else 400.0 / max(rows, columns)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    z_center = (slices - 1) * slice_thickness / 2.0
    paths: list[Path] = []
    sop_uids: list[str] = []
    for index in range(slices):
        z = index * slice_thickness
        hu = phantom_slice(phantom, z, rows, columns, spacing, z_center)
        sop_uid = generate_uid()
        ds = _ct_dataset(
            hu,
            instance_number=(order[index] if order is not None else index + 1),
            z=z,
            spacing=spacing,
            rows=rows,
            columns=columns,
            slice_thickness=slice_thickness,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
            sop_uid=sop_uid,
            patient_name=patient_name,
            patient_id=patient_id,
            accession=accession,
        )
        path = out_dir / f"ct_{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sop_uids.append(sop_uid)
    return Series(paths=paths, study_uid=study_uid, series_uid=series_uid, sop_uids=sop_uids)


def _ct_dataset(
    hu: NDArray[np.int16],
    *,
    instance_number: int,
    z: float,
    spacing: float,
    rows: int,
    columns: int,
    slice_thickness: float,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    sop_uid: str,
    patient_name: str,
    patient_id: str,
    accession: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
    ds.AccessionNumber = accession
    ds.Modality = "CT"
    ds.Manufacturer = "dicomnode synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic chest CT"
    ds.SeriesDescription = "Phantom axial"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    ds.SliceThickness = f"{slice_thickness:g}"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = str(instance_number)
    half_x = (columns - 1) / 2.0 * spacing
    half_y = (rows - 1) / 2.0 * spacing
    ds.ImagePositionPatient = [f"{-half_x:.4f}", f"{-half_y:.4f}", f"{z:.4f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z:.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1600"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = (hu.astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16).tobytes()
    return ds


# --- Oblique series, projection radiographs and multi-frame objects -------------------------


def rotation_about_axis(axis: Sequence[float], degrees: float) -> NDArray[np.float64]:
    """The 3x3 matrix rotating patient coordinates by ``degrees`` about ``axis``.

    Parameters
    ----------
    axis : sequence of 3 floats
        The rotation axis (need not be a unit vector, must not be zero).
    degrees : float
        The angle, counter-clockwise when looking down the axis.

    Returns
    -------
    ndarray of float64, (3, 3)
        A proper rotation matrix (Rodrigues' formula).

    Raises
    ------
    ValueError
        If ``axis`` is not three numbers or is the zero vector.
    """
    vector = np.asarray(axis, dtype=np.float64)
    if vector.shape != (3,) or not np.linalg.norm(vector) > 0.0:
        raise ValueError(f"axis must be a non-zero 3-vector, got {axis!r}")
    x, y, z = vector / np.linalg.norm(vector)
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    angle = np.deg2rad(degrees)
    rotation: NDArray[np.float64] = (
        np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * (cross @ cross)
    )
    return rotation


def write_oblique_ct_series(
    out_dir: Path,
    slices: int = 64,
    rows: int = 128,
    columns: int = 128,
    *,
    rotation: NDArray[np.float64],
    **kwargs: Any,
) -> Series:
    """Write the CT phantom series of :func:`write_ct_series`, rigidly rotated.

    Every slice's Image Orientation and Image Position (Patient) are rotated
    by ``rotation`` about the patient origin, so the pixel data stay those of
    the axial series while the stack becomes oblique; Slice Location becomes
    the position along the rotated slice normal.

    Parameters
    ----------
    out_dir : Path
        Created when missing; files are named as by :func:`write_ct_series`.
    slices, rows, columns : int
        Size of the volume.
    rotation : ndarray of float64, (3, 3)
        A rotation matrix, e.g. from :func:`rotation_about_axis`.
    **kwargs
        Passed on to :func:`write_ct_series` (``order``, ``slice_thickness``...).

    Returns
    -------
    Series
        Paths and UIDs of what was written.

    Raises
    ------
    ValueError
        If ``rotation`` is not a 3x3 rotation matrix.
    """
    matrix = np.asarray(rotation, dtype=np.float64)
    if matrix.shape != (3, 3) or not np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-9):
        raise ValueError("rotation must be a 3x3 orthonormal matrix")
    if not np.isclose(np.linalg.det(matrix), 1.0, atol=1e-9):
        raise ValueError("rotation must not mirror (determinant must be +1)")
    series = write_ct_series(out_dir, slices, rows, columns, **kwargs)
    for path in series.paths:
        ds = dcmread(path)
        row = matrix @ np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        column = matrix @ np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        position = matrix @ np.array([float(v) for v in ds.ImagePositionPatient])
        ds.ImageOrientationPatient = [_ds_value(v, 8) for v in (*row, *column)]
        ds.ImagePositionPatient = [_ds_value(v, 4) for v in position]
        ds.SliceLocation = _ds_value(float(position @ np.cross(row, column)), 4)
        ds.save_as(path, enforce_file_format=True)
    return series


def dx_projection(rows: int, columns: int, phantom: Phantom | None = None) -> NDArray[np.uint16]:
    """Stored values (12 bit, MONOCHROME2) of a frontal radiograph of the phantom.

    Each pixel is ``round(4095 * (1 - exp(-mu * t)))`` where ``t`` is the
    length (mm) of water the ray crosses: lungs count as air, the body as
    water, and ``mu`` = 0.02 / mm. Bright means attenuating, as displayed.

    Parameters
    ----------
    rows, columns : int
        Image size; the phantom's cranio-caudal extent fills the rows and its
        left-right extent the columns, with a 10 % margin.
    phantom : Phantom, optional
        The geometry; default :class:`Phantom`.

    Returns
    -------
    ndarray of uint16, (rows, columns)
    """
    phantom = phantom or Phantom()
    bx, by = phantom.body_radii
    a, b, c = phantom.lung_radii
    height = 2.4 * c
    width = 2.2 * bx
    z, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    z = (z - (rows - 1) / 2.0) * height / rows
    x = (x - (columns - 1) / 2.0) * width / columns
    body = 2.0 * by * np.sqrt(np.clip(1.0 - (x / bx) ** 2, 0.0, None))
    body[np.abs(z) > 1.1 * c] = 0.0
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        lx = x - side * phantom.lung_offset_x
        lungs += 2.0 * b * np.sqrt(np.clip(1.0 - (lx / a) ** 2 - (z / c) ** 2, 0.0, None))
    water = np.clip(body - lungs, 0.0, None)
    values: NDArray[np.uint16] = np.rint(4095.0 * (1.0 - np.exp(-0.02 * water))).astype(np.uint16)
    return values


def display_window(values: NDArray[Any], top: int, inverted: bool = False) -> tuple[int, int]:
    """A VOI window (center, width) as a modality sets one: the 1st to 99th
    percentile of the image's values.

    Parameters
    ----------
    values : ndarray
        The image as displayed (bright = attenuating), before any MONOCHROME1
        inversion.
    top : int
        The largest stored value (``2**BitsStored - 1``).
    inverted : bool
        The stored values are ``top - values`` (MONOCHROME1): the window is
        mirrored so that both display the same.

    Returns
    -------
    tuple of int
        Window Center and Window Width (at least 2).
    """
    low, high = (float(v) for v in np.percentile(values, (1.0, 99.0)))
    center = round((low + high) / 2.0)
    width = max(2, round(high - low))
    # LINEAR windowing maps x to (x - (c - 0.5)) / (w - 1) + 0.5: mirroring the
    # values (top - x) mirrors the window about (top + 1) / 2
    return (top + 1 - center if inverted else center), width


def write_dx_image(
    path: Path,
    rows: int = 256,
    columns: int = 256,
    *,
    photometric: str = "MONOCHROME2",
    imager_pixel_spacing: float = 0.5,
    view_position: str = "PA",
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "PHANTOM^DX",
    patient_id: str = "PHANTOM-002",
    accession: str = "ACC0002",
    phantom: Phantom | None = None,
) -> Series:
    """Write a Digital X-Ray (For Presentation) chest radiograph of the phantom.

    The image holds :func:`dx_projection`; with ``MONOCHROME1`` the stored
    values are inverted (``4095 - value``) so the image displays the same.
    It has Imager Pixel Spacing but no Pixel Spacing and no patient geometry
    (no Image Position or Orientation), like real projection radiographs.

    Parameters
    ----------
    path : Path
        The file to write; its folder is created when missing.
    rows, columns : int
        Image size.
    photometric : {"MONOCHROME2", "MONOCHROME1"}
        Photometric Interpretation.
    imager_pixel_spacing : float
        Imager Pixel Spacing in mm (both directions).
    view_position : {"PA", "AP"}
        View Position (and the matching View Code Sequence).
    study_uid, series_uid : str, optional
        Generated when not given.
    patient_name, patient_id, accession : str
        Patient and study identification.
    phantom : Phantom, optional
        The geometry; default :class:`Phantom`.

    Returns
    -------
    Series
        The one path and the UIDs written.

    Raises
    ------
    ValueError
        If ``photometric`` or ``view_position`` is not one of those listed.
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if view_position not in _DX_VIEWS:
        raise ValueError(f"view_position must be one of {sorted(_DX_VIEWS)}, got {view_position!r}")
    values = dx_projection(rows, columns, phantom)
    center, width = display_window(values, 4095, inverted=photometric == "MONOCHROME1")
    if photometric == "MONOCHROME1":
        values = (4095 - values).astype(np.uint16)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    sop_uid = generate_uid()
    ds = _common_dataset(
        DigitalXRayImageStorageForPresentation,
        sop_uid,
        modality="DX",
        study_uid=study_uid,
        series_uid=series_uid,
        patient_name=patient_name,
        patient_id=patient_id,
        accession=accession,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDate = "20260101"
    ds.AcquisitionTime = "120000"
    ds.StudyDescription = "Synthetic chest radiograph"
    ds.SeriesDescription = f"Phantom chest {view_position}"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = [_code(codes.SCT.Thorax)]
    ds.ViewPosition = view_position
    ds.ViewCodeSequence = [_code(_DX_VIEWS[view_position])]
    ds.PositionerType = "NONE"
    ds.AcquisitionContextSequence = []
    ds.PatientOrientation = ["L", "F"] if view_position == "PA" else ["R", "F"]
    ds.ImagerPixelSpacing = [_ds_value(imager_pixel_spacing, 6)] * 2
    ds.DetectorType = "SCINTILLATOR"
    ds.KVP = "120"
    ds.InstanceNumber = "1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = str(center)
    ds.WindowWidth = str(width)
    ds.PixelData = values.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Series(paths=[path], study_uid=study_uid, series_uid=series_uid, sop_uids=[sop_uid])


def write_enhanced_ct(
    path: Path,
    frames: int = 16,
    rows: int = 64,
    columns: int = 64,
    *,
    spacing: float | None = None,
    slice_thickness: float = 2.5,
    frame_order: Sequence[int] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "PHANTOM^CT",
    patient_id: str = "PHANTOM-001",
    accession: str = "ACC0001",
    phantom: Phantom | None = None,
) -> Series:
    """Write the CT phantom as one Enhanced CT Image (multi-frame) instance.

    Slice ``k`` of the phantom lies at ``z = k * slice_thickness`` as in
    :func:`write_ct_series`; each frame's position is in its Per-Frame
    Functional Groups (Plane Position), while orientation, pixel measures and
    rescale are shared.

    Parameters
    ----------
    path : Path
        The file to write; its folder is created when missing.
    frames, rows, columns : int
        Size of the volume.
    spacing : float, optional
        In-plane pixel spacing in mm; default fits a 400 mm field of view.
    slice_thickness : float
        Slice thickness and spacing in mm.
    frame_order : sequence of int, optional
        The slice index stored in each frame (a permutation of
        ``range(frames)``), to test that readers sort frames by position.
    study_uid, series_uid : str, optional
        Generated when not given.
    patient_name, patient_id, accession : str
        Patient and study identification.
    phantom : Phantom, optional
        The geometry; default :class:`Phantom`.

    Returns
    -------
    Series
        The one path and the UIDs written.

    Raises
    ------
    ValueError
        If ``frame_order`` is not a permutation of the slice indices.
    """
    order = list(frame_order) if frame_order is not None else list(range(frames))
    if sorted(order) != list(range(frames)):
        raise ValueError(f"frame_order must be a permutation of range({frames})")
    phantom = phantom or Phantom()
    spacing = spacing if spacing is not None else 400.0 / max(rows, columns)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    sop_uid = generate_uid()
    z_center = (frames - 1) * slice_thickness / 2.0
    ds = _common_dataset(
        EnhancedCTImageStorage,
        sop_uid,
        modality="CT",
        study_uid=study_uid,
        series_uid=series_uid,
        patient_name=patient_name,
        patient_id=patient_id,
        accession=accession,
    )
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.PatientPosition = "HFS"
    ds.StudyDescription = "Synthetic chest CT"
    ds.SeriesDescription = "Phantom enhanced axial"
    ds.ManufacturerModelName = "synthetic"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "1"
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = "1"
    ds.AcquisitionNumber = "1"
    ds.AcquisitionDateTime = "20260101120000"
    ds.AcquisitionDuration = 1.0
    ds.ContentQualification = "RESEARCH"
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = []
    dimension_uid = generate_uid()
    ds.DimensionOrganizationType = "3D"
    ds.DimensionOrganizationSequence = [Dataset()]
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dimension_uid
    ds.DimensionIndexSequence = [
        _dimension(dimension_uid, 0x00209056, "Stack ID"),
        _dimension(dimension_uid, 0x00209057, "In-Stack Position Number"),
    ]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds_value(spacing, 6)] * 2
    measures.SliceThickness = _ds_value(slice_thickness, 6)
    measures.SpacingBetweenSlices = _ds_value(slice_thickness, 6)
    shared.PixelMeasuresSequence = [measures]
    orientation = Dataset()
    orientation.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    shared.PlaneOrientationSequence = [orientation]
    transformation = Dataset()
    transformation.RescaleIntercept = "-1024"
    transformation.RescaleSlope = "1"
    transformation.RescaleType = "HU"
    shared.PixelValueTransformationSequence = [transformation]
    frame_type = Dataset()
    frame_type.FrameType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    frame_type.PixelPresentation = "MONOCHROME"
    frame_type.VolumetricProperties = "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = [frame_type]
    voi = Dataset()
    voi.WindowCenter = "-600"
    voi.WindowWidth = "1600"
    shared.FrameVOILUTSequence = [voi]
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [_code(codes.SCT.Thorax)]
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = [anatomy]
    irradiation = Dataset()
    irradiation.IrradiationEventUID = generate_uid()
    shared.IrradiationEventIdentificationSequence = [irradiation]
    ds.SharedFunctionalGroupsSequence = [shared]
    half_x = (columns - 1) / 2.0 * spacing
    half_y = (rows - 1) / 2.0 * spacing
    per_frame: list[Dataset] = []
    pixels = np.empty((frames, rows, columns), dtype=np.uint16)
    for frame, index in enumerate(order):
        z = index * slice_thickness
        hu = phantom_slice(phantom, z, rows, columns, spacing, z_center)
        pixels[frame] = (hu.astype(np.int32) + 1024).clip(0, 4095)
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = index + 1
        content.DimensionIndexValues = [1, index + 1]
        item.FrameContentSequence = [content]
        position = Dataset()
        position.ImagePositionPatient = [_ds_value(v, 4) for v in (-half_x, -half_y, z)]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Series(paths=[path], study_uid=study_uid, series_uid=series_uid, sop_uids=[sop_uid])


def _common_dataset(
    sop_class_uid: str,
    sop_uid: str,
    *,
    modality: str,
    study_uid: str,
    series_uid: str,
    patient_name: str,
    patient_id: str,
    accession: str,
) -> Dataset:
    """File meta, SOP Common, patient, study, series and equipment attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "dicomnode synthetic"
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    return ds


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _dimension(organization_uid: str, pointer: int, label: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = organization_uid
    item.DimensionIndexPointer = pointer
    item.FunctionalGroupPointer = 0x00209111  # Frame Content Sequence
    item.DimensionDescriptionLabel = label
    return item


def _ds_value(value: float, decimals: int) -> str:
    """A Decimal String of at most 16 characters, without ``-0``."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
