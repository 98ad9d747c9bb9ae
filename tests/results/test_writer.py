"""The writer that the runner calls."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from dicomnode.protocol import (
    ARTIFICIAL_INTELLIGENCE_CODE,
    Algorithm,
    Code,
    Finding,
    Heatmap,
    InputRefused,
    NotificationTarget,
    PipelineResult,
    ResultContext,
)
from dicomnode.results.oru import control_id_for
from dicomnode.results.warmup import warm_up_case
from dicomnode.results.writer import DicomResultWriter
from dicomnode.runner.volume import drop_pixels, load_series, read_series
from dicomnode.synthetic import write_ct_series
from tests.results.helpers import Case, assert_sr_valid, assert_valid


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


def test_the_oru_is_built_with_the_objects_and_names_them(tmp_path: Path) -> None:
    """One ORU^R01 per notification target, built now: it names the SR the
    writer wrote, and is sent only once that SR is delivered."""
    series = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    notified = replace(
        context(tmp_path, series.paths),
        final=True,
        notifications=(NotificationTarget("ris", receiving_application="RIS"),),
    )
    written = DicomResultWriter().write(RESULT, load_series(series.paths), notified)
    (report,) = written.objects
    (message,) = written.messages
    assert (message.destination, message.control_id) == ("ris", control_id_for(1, "ris"))
    assert message.refers_to == (report.sop_instance_uid,)
    parsed = parse_message(message.body, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.msh.msh_10.to_er7() == message.control_id
    assert f"{report.sop_instance_uid}^^AP^DICOM" in message.body
    assert "|F|" in message.body.split("\r")[3]  # OBR-25: the rule says final
    assert pydicom.dcmread(report.path).PreliminaryFlag == "FINAL"


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


def test_the_warm_up_writes_a_whole_result_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a worker writes at start: the throw-away case makes every kind of
    object a study makes (so all first-use costs are paid), and the warm-up
    removes it again."""
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    case = warm_up_case(case_dir)
    written = DicomResultWriter().write(case.result, case.volume, case.context)
    assert sorted(o.kind for o in written.objects) == ["SEG", "SR"]
    assert all(o.path.is_file() for o in written.objects)
    assert [m.destination for m in written.messages] == ["ris"]

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert DicomResultWriter().warm_up() > 0
    assert list(scratch.iterdir()) == []


def test_headers_the_worker_read_give_the_same_objects_without_reading_a_file(
    tmp_path: Path,
) -> None:
    """Given the sources' headers (pixel data dropped, as a worker passes them),
    the writer reads no source file: with the files gone it writes the same
    objects as from the files, and each passes dciodvfy."""
    case = warm_up_case(tmp_path)
    heatmap = np.zeros(case.volume.array.shape, dtype=np.float32)
    heatmap[:, 2:6, 2:6] = 0.8
    result = replace(case.result, heatmaps=(Heatmap(case.result.findings[0].concept, heatmap),))
    from_files = DicomResultWriter().write(
        result, case.volume, replace(case.context, out_dir=tmp_path / "from-files")
    )
    headers = read_series(case.context.source_files)
    drop_pixels(headers)
    for path in case.context.source_files:
        path.unlink()
    from_headers = DicomResultWriter().write(
        result,
        case.volume,
        replace(case.context, out_dir=tmp_path / "from-headers", sources=tuple(reversed(headers))),
    )
    assert [o.kind for o in from_headers.objects] == [o.kind for o in from_files.objects]
    assert {"SEG", "SR", "OT"} <= {o.kind for o in from_headers.objects}
    for ours, theirs in zip(from_headers.objects, from_files.objects, strict=True):
        assert_valid(ours.path)
        a, b = pydicom.dcmread(ours.path), pydicom.dcmread(theirs.path)
        for ds in (a, b):  # when each was written differs, and highdicom's random UID
            ds.walk(
                lambda d, e: (
                    (e.VR in ("DA", "TM", "DT") or e.keyword == "DimensionOrganizationUID")
                    and d.pop(e.tag)
                )
            )
        assert a == b, f"{ours.kind} differs"


def test_the_seg_built_beside_gives_the_objects_of_building_in_turn(
    tmp_path: Path, ct_case: Case
) -> None:
    """The SEG built in a forked child while the report is built from its
    reference gives the same objects as building one after the other, and
    they pass dciodvfy (the SR PixelMed's validator too)."""
    assert len(ct_case.volume.sources) > 1  # the case a child builds the SEG for
    base = replace(ct_case.context, notifications=(NotificationTarget("ris"),))
    beside = DicomResultWriter().write(
        ct_case.result, ct_case.volume, replace(base, out_dir=tmp_path / "beside")
    )
    in_turn = DicomResultWriter(parallel=False).write(
        ct_case.result, ct_case.volume, replace(base, out_dir=tmp_path / "in-turn")
    )
    assert len(beside.messages) == len(in_turn.messages) == 1
    assert [(o.kind, o.sop_instance_uid) for o in beside.objects] == [
        (o.kind, o.sop_instance_uid) for o in in_turn.objects
    ]
    assert [o.kind for o in beside.objects] == ["SEG", "SR"]
    for ours, theirs in zip(beside.objects, in_turn.objects, strict=True):
        assert ours.path.parent == tmp_path / "beside"
        if ours.kind == "SR":
            assert_sr_valid(ours.path)
        else:
            assert_valid(ours.path)
        a, b = pydicom.dcmread(ours.path), pydicom.dcmread(theirs.path)
        for ds in (a, b):  # when each was written differs
            ds.walk(lambda d, e: e.VR in ("DA", "TM", "DT") and d.pop(e.tag))
        assert a == b, f"{ours.kind} differs"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "beside",
        "in-turn",
    ]  # nothing left under a staging name
