"""A throw-away result, written once when a worker starts.

The first SEG and SR a process builds pays one-off costs: imports done on
first use (scikit-image's contour code pulls in SciPy's signal package,
hl7apy its message definitions), highdicom's tables of the standard, numpy
and pydicom code paths met for the first time. :func:`warm_up_case` makes a
tiny CT (two 16 x 16 slices, in memory: no patient, no network) and a result
with a segment, a measurement and a finding, so that
:meth:`~dicomnode.results.writer.DicomResultWriter.warm_up` can write its
objects to a temporary directory and delete them before the first study
arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomnode.protocol import (
    MORPHOLOGICAL_OPERATIONS_CODE,
    Algorithm,
    Code,
    Finding,
    Measurement,
    NotificationTarget,
    PipelineResult,
    ResultContext,
    Segment,
    SliceSource,
    Volume,
)

SLICES, SIZE, SPACING = 2, 16, 2.0

_LUNG = Code("39607008", "SCT", "Lung")
_TISSUE = Code("85756007", "SCT", "Tissue")
_VOLUME = Code("118565006", "SCT", "Volume")
_MILLILITRE = Code("mL", "UCUM", "milliliter")
_NODULE = Code("427359005", "SCT", "Solitary nodule of lung")


@dataclass(frozen=True)
class WarmUpCase:
    """A result and everything the writer needs to write it."""

    result: PipelineResult
    volume: Volume
    context: ResultContext


def _slice(index: int, study: str, series: str, frame: str) -> Dataset:
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName = "WARMUP", ""
    ds.Modality, ds.Manufacturer = "CT", "dicomnode"
    ds.PatientName, ds.PatientID = "WARM^UP", "WARMUP"
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", "1", str(index + 1)
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * SPACING]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [SPACING, SPACING], SPACING
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.full((SIZE, SIZE), 1024, dtype=np.uint16).tobytes()
    return ds


def warm_up_case(directory: Path) -> WarmUpCase:
    """Write the tiny CT to ``directory`` and return a result on it.

    Parameters
    ----------
    directory : Path
        An empty directory; the result's objects go to ``directory / "out"``.
    """
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    datasets = [_slice(i, study, series, frame) for i in range(SLICES)]
    paths = []
    for i, ds in enumerate(datasets):
        path = directory / f"ct_{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    label_map = np.zeros((SLICES, SIZE, SIZE), dtype=np.uint8)
    label_map[:, 4:12, 3:10] = 1
    volume = Volume(
        array=np.zeros((SLICES, SIZE, SIZE), dtype=np.float32),
        spacing=(SPACING, SPACING, SPACING),
        origin=(0.0, 0.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, 1.0),
        modality="CT",
        study_instance_uid=study,
        series_instance_uid=series,
        frame_of_reference_uid=frame,
        sources=tuple(SliceSource(str(ds.SOPInstanceUID), CTImageStorage) for ds in datasets),
    )
    result = PipelineResult(
        label_map=label_map,
        segments=(Segment(1, "Lung", _TISSUE, _LUNG),),
        measurements=(
            Measurement(_VOLUME, float(label_map.sum()) * volume.voxel_volume_ml, _MILLILITRE, 1),
        ),
        findings=(Finding(_NODULE, 0.9, 0.5),),
    )
    context = ResultContext(
        job_id=0,
        pipeline_name="warm-up",
        pipeline_version="0",
        source_files=tuple(paths),
        out_dir=directory / "out",
        node_name="WARMUP",
        algorithm=Algorithm(MORPHOLOGICAL_OPERATIONS_CODE, trained_model=False),
        notifications=(NotificationTarget("ris"),),
    )
    return WarmUpCase(result, volume, context)
