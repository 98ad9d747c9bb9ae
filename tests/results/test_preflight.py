"""The writer refuses at once, as permanent, sources it cannot make objects from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.errors import ResultError
from dicomnode.protocol import (
    MORPHOLOGICAL_OPERATIONS_CODE,
    Algorithm,
    Code,
    PipelineResult,
    ResultContext,
    Segment,
    Volume,
)
from dicomnode.results.writer import DicomResultWriter
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import write_ct_series, write_dx_image

TISSUE = Segment(
    1,
    "dense",
    Code("91723000", "SCT", "Anatomical Structure"),
    Code("85756007", "SCT", "Tissue"),
)


def context(tmp_path: Path, files: list[Path]) -> ResultContext:
    return ResultContext(
        job_id=1,
        pipeline_name="test",
        pipeline_version="1",
        source_files=tuple(files),
        out_dir=tmp_path / "out",
        node_name="NODE",
        algorithm=Algorithm(family=MORPHOLOGICAL_OPERATIONS_CODE, trained_model=False),
    )


def labelled(volume: Volume) -> PipelineResult:
    return PipelineResult(label_map=(volume.array > -500).astype(np.uint8), segments=(TISSUE,))


def strip_frame_of_reference(paths: list[Path]) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)


@pytest.mark.parametrize("slices", [1, 3])
def test_a_ct_without_frame_of_reference_gets_no_seg(tmp_path: Path, slices: int) -> None:
    series = write_ct_series(tmp_path / "ct", slices=slices, rows=16, columns=16)
    strip_frame_of_reference(series.paths)
    volume = load_series(series.paths)
    with pytest.raises(ResultError, match=r"no Frame of Reference UID \(0020,0052\)"):
        DicomResultWriter().write(labelled(volume), volume, context(tmp_path, series.paths))
    assert not (tmp_path / "out").exists()


def test_a_radiograph_needs_no_frame_of_reference(tmp_path: Path) -> None:
    path = write_dx_image(tmp_path / "dx.dcm", rows=32, columns=32).paths[0]
    assert "FrameOfReferenceUID" not in pydicom.dcmread(path)
    volume = load_series([path])
    written = DicomResultWriter().write(labelled(volume), volume, context(tmp_path, [path]))
    # segments without measurements: the SEG holds them all, there is nothing to report
    assert sorted(o.kind for o in written.objects) == ["SEG"]


def test_a_refusal_of_the_builders_is_permanent(tmp_path: Path) -> None:
    """A label map not in the volume's grid: the ValueError of the builders (and of
    highdicom, which they call) becomes a ResultError."""
    series = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    volume = load_series(series.paths)
    wrong = PipelineResult(label_map=np.ones((3, 8, 8), dtype=np.uint8), segments=(TISSUE,))
    with pytest.raises(ResultError, match="cannot be made from this input"):
        DicomResultWriter().write(wrong, volume, context(tmp_path, series.paths))
