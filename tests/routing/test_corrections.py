"""Recognising a corrected SEG by its references to a SEG the node wrote."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicomnode.jobs import InstanceRecord, RunSpec, SQLiteJobStore
from dicomnode.protocol import ResultObject
from dicomnode.routing.corrections import find_correction
from dicomnode.synthetic import write_ct_series
from tests.monitoring.imperfect import ErodedLungs
from tests.monitoring.test_shadow import corrected_seg, hu_volume
from tests.results.helpers import build_case, load


def written(tmp_path: Path) -> tuple[SQLiteJobStore, Dataset, list[Dataset], np.ndarray, int]:
    """A store whose one run wrote a SEG (delivered to "pacs"), and that SEG."""
    series = write_ct_series(tmp_path / "ct", slices=6, rows=32, columns=32)
    volume, sources = load(series.paths)
    case = build_case(
        series.paths,
        ErodedLungs().run(volume, "cpu"),
        tmp_path / "out",
        name="test-eroded-lungs",
        volume=volume,
        sources=sources,
    )
    assert case.seg is not None and case.seg_path is not None
    store = SQLiteJobStore(tmp_path / "jobs.db")
    first = pydicom.dcmread(series.paths[0])
    outcome = store.record_instance(
        InstanceRecord(
            sop_instance_uid=str(first.SOPInstanceUID),
            series_instance_uid=series.series_uid,
            study_instance_uid=series.study_uid,
            sop_class_uid=str(first.SOPClassUID),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="CT",
            path=str(series.paths[0]),
            size=1,
            calling_ae="SCANNER",
            received_at=1.0,
        )
    )
    store.complete_due(100.0, 1.0, 10.0)
    (run_id,) = store.route(
        outcome.job_id,
        [RunSpec("lungs", "test-eroded-lungs", series.series_uid, destinations=("pacs",))],
        "matched",
    )
    store.claim_runs(200.0, 1)
    seg = case.seg
    store.finish_run(
        run_id,
        str(tmp_path / "result"),
        "done",
        [
            ResultObject(
                kind="SEG",
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                study_instance_uid=str(seg.StudyInstanceUID),
                series_instance_uid=str(seg.SeriesInstanceUID),
                path=case.seg_path,
            )
        ],
    )
    hu, datasets = hu_volume(series.paths)
    return store, seg, datasets, hu, run_id


def test_matched_by_our_series_and_the_source_series_not_by_either_alone(tmp_path: Path) -> None:
    store, ours, datasets, hu, run_id = written(tmp_path)
    lungs = hu == -850
    body = hu > -500
    fixed = corrected_seg(datasets, lungs, body, ours)
    # the viewer names our SEG's series, but an instance of it we never wrote
    fixed.ReferencedSeriesSequence[-1].ReferencedInstanceSequence[
        0
    ].ReferencedSOPInstanceUID = hd.UID()
    path = tmp_path / "fixed.dcm"
    fixed.save_as(path, enforce_file_format=True)
    found = find_correction(path, store.written_segmentations)
    assert found is not None
    assert (found.job_id, found.matched_by) == (run_id, "series")
    assert found.seg_sop_instance_uid == str(ours.SOPInstanceUID)

    # without the source series among its references: not ours
    fixed.ReferencedSeriesSequence = [fixed.ReferencedSeriesSequence[-1]]
    fixed.save_as(path, enforce_file_format=True)
    assert find_correction(path, store.written_segmentations) is None


def test_our_own_seg_sent_back_and_a_ct_are_no_corrections(tmp_path: Path) -> None:
    store, ours, datasets, _, _ = written(tmp_path)
    echo = tmp_path / "echo.dcm"
    ours.save_as(echo, enforce_file_format=True)
    assert find_correction(echo, store.written_segmentations) is None
    ct = tmp_path / "ct.dcm"
    datasets[0].save_as(ct, enforce_file_format=True)
    assert find_correction(ct, store.written_segmentations) is None
