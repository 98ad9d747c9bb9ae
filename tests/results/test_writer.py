"""The writer that the runner calls."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicomnode.protocol import (
    ARTIFICIAL_INTELLIGENCE_CODE,
    Algorithm,
    Code,
    Finding,
    InputRefused,
    PipelineResult,
    ResultContext,
)
from dicomnode.results.writer import DicomResultWriter
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import write_ct_series


def context(tmp_path: Path, files: list[Path]) -> ResultContext:
    return ResultContext(
        job_id=1,
        pipeline_name="test",
        pipeline_version="1",
        source_files=tuple(files),
        out_dir=tmp_path / "out",
        node_name="NODE",
        algorithm=Algorithm(family=ARTIFICIAL_INTELLIGENCE_CODE, trained_model=True),
    )


RESULT = PipelineResult(findings=(Finding(Code("27925004", "SCT", "Nodule"), 0.7, 0.5),))


def test_writes_an_sr_for_findings_only(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    written = DicomResultWriter().write(
        RESULT, load_series(series.paths), context(tmp_path, series.paths)
    )
    (report,) = written.objects
    ds = pydicom.dcmread(report.path)
    assert ds.PatientName == "PHANTOM^CT"
    assert (report.kind, report.sop_class_uid, report.sop_instance_uid) == (
        "SR",
        ds.SOPClassUID,
        ds.SOPInstanceUID,
    )
    assert (report.study_instance_uid, report.series_instance_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
    )
    assert written.messages == ()  # nobody to notify


def test_an_ambiguous_patient_name_is_refused(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.PatientName = "DOE^JOHN\\DOE^JANE"  # two values
        ds.save_as(path)
    with pytest.raises(InputRefused, match="2 values"):
        DicomResultWriter().write(
            RESULT, load_series(series.paths), context(tmp_path, series.paths)
        )
    assert not (tmp_path / "out").exists()
