"""describe_study on real files: a synthetic CT series and pydicom's MR sample."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import parse_config
from dicomnode.routing import describe_study, explain_text, route
from dicomnode.synthetic import Series, write_ct_series

MR_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"


@pytest.fixture
def ct(tmp_path: Path) -> Series:
    return write_ct_series(tmp_path / "ct", slices=4, rows=16, columns=16)


def test_groups_files_into_studies_and_series(tmp_path: Path, ct: Series) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    studies = describe_study([*ct.paths, MR_SMALL, junk], calling_ae="CT1")
    assert [s.study_instance_uid for s in studies] == [
        ct.study_uid,
        "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457",
    ]
    ct_study, mr_study = studies
    assert ct_study.calling_ae == mr_study.calling_ae == "CT1"
    assert [(s.series_instance_uid, s.instance_count) for s in ct_study.series] == [
        (ct.series_uid, 4)
    ]
    assert mr_study.series[0].instance_count == 1


def test_attributes_by_keyword(ct: Series) -> None:
    (study,) = describe_study(ct.paths)
    series = study.series[0].attributes
    assert study.attributes["StudyDescription"] == "Synthetic chest CT"
    assert series["Modality"] == "CT"
    assert series["ImageType"] == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert series["SliceThickness"] == 2.5
    assert series["PatientName"] == "PHANTOM^CT"
    assert isinstance(series["PatientName"], str)
    assert "PixelData" not in series and "file_meta" not in series
    assert all(keyword for keyword in series)


def test_sample_mr_header(ct: Series) -> None:
    (mr,) = describe_study([MR_SMALL])
    attributes = mr.series[0].attributes
    assert attributes["Modality"] == "MR"
    assert attributes["PatientName"] == "CompressedSamples^MR1"
    assert not any(isinstance(value, bytes) for value in attributes.values())
    assert mr.calling_ae == ""


def test_series_grouping_and_counts(tmp_path: Path) -> None:
    first = write_ct_series(tmp_path / "a", slices=3, rows=8, columns=8, slice_thickness=1.0)
    second = write_ct_series(
        tmp_path / "b", slices=2, rows=8, columns=8, study_uid=first.study_uid, slice_thickness=5
    )
    (study,) = describe_study([*second.paths, *first.paths])
    counts = {s.series_instance_uid: s.instance_count for s in study.series}
    assert counts == {first.series_uid: 3, second.series_uid: 2}
    assert study.series[0].series_instance_uid == second.series_uid  # first seen first


def test_skips_files_that_are_not_dicom_or_unreadable(tmp_path: Path, ct: Series) -> None:
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ct.paths[0].read_bytes()[:200])
    directory = tmp_path / "a-directory"
    directory.mkdir()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    studies = describe_study([truncated, directory, empty, tmp_path / "missing.dcm", *ct.paths])
    assert len(studies) == 1
    assert studies[0].series[0].instance_count == 4


def test_routes_a_described_series_end_to_end(tmp_path: Path, ct: Series) -> None:
    shutil.copy(MR_SMALL, tmp_path / "mr.dcm")
    config = parse_config(
        {
            "routing": {
                "rules": [
                    {
                        "name": "ct-chest",
                        "match": {
                            "study": {"StudyDescription": {"regex": "(?i)chest"}},
                            "series": {
                                "Modality": {"equals": "CT"},
                                "SliceThickness": {"range": {"max": 3.0}},
                                "ImageType": {"one_of": ["AXIAL"]},
                            },
                        },
                        "pipeline": "ct-lung",
                    }
                ]
            }
        }
    ).routing
    ct_study, mr_study = describe_study([*ct.paths, tmp_path / "mr.dcm"])
    decision = route(ct_study, config)
    assert [run.series_instance_uid for run in decision.runs] == [ct.series_uid]
    assert "SliceThickness 2.5 range max 3: yes" in explain_text(decision)
    assert route(mr_study, config).discarded


def test_a_256_file_series_is_described_quickly(tmp_path: Path) -> None:
    import time

    series = write_ct_series(tmp_path / "big", slices=256, rows=8, columns=8)
    started = time.perf_counter()
    (study,) = describe_study(series.paths)
    elapsed = time.perf_counter() - started
    assert study.series[0].instance_count == 256
    assert elapsed < 5.0, f"describe_study took {elapsed:.2f} s for 256 files"


def test_with_the_recorded_uids_one_header_per_series_is_read(tmp_path: Path) -> None:
    """Given each file's UIDs as recorded at receipt, only the first readable
    file of each series is read and the rest are counted: the series'
    attributes and counts are those of reading every file."""
    study = pydicom.uid.generate_uid()
    first = write_ct_series(tmp_path / "a", slices=4, rows=8, columns=8, study_uid=study)
    second = write_ct_series(tmp_path / "b", slices=3, rows=8, columns=8, study_uid=study)
    paths = [*first.paths, *second.paths]
    recorded = [(study, first.series_uid)] * 4 + [(study, second.series_uid)] * 3
    everything = describe_study(paths, "SCANNER")
    for path in [*first.paths[1:], *second.paths[1:]]:
        path.write_bytes(b"no longer readable")  # proves they are not read
    (described,) = describe_study(paths, "SCANNER", recorded=recorded)
    assert described == everything[0]
    assert [s.instance_count for s in described.series] == [4, 3]
    (unreadable,) = describe_study(paths, "SCANNER")  # reading every file counts what it can
    assert [s.instance_count for s in unreadable.series] == [1, 1]
