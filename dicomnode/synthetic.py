"""Synthetic DICOM series with known content, for tests, benchmarks and demos.

The CT phantom is a water-filled elliptical body (0 HU) in air (-1000 HU)
holding two ellipsoidal lungs (-850 HU), so later stages can check what they
measure against volumes known in advance. Every file is a complete CT Image
Storage instance that DICOM validators accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

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
