"""The completeness walk over real files: whole ones pass, cut ones do not."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import data_element_generator
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomnode.errors import IncompleteDatasetError
from dicomnode.ingress.integrity import check_complete, check_complete_file, file_dataset_offset

SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"
#: One per transfer syntax and shape: native, big endian, deflated,
#: encapsulated (single and multi-frame), nested sequences (RT plan, SR).
NAMES = [
    "CT_small.dcm",
    "rtplan.dcm",
    "ExplVR_BigEnd.dcm",
    "image_dfl.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "examples_ybr_color.dcm",
    "liver_1frame.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
    "SC_rgb_rle_16bit.dcm",
]


def split(path: Path) -> tuple[bytes, str]:
    raw = path.read_bytes()
    start = file_dataset_offset(raw)
    assert start is not None
    return raw[start:], str(
        pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    )


@pytest.mark.parametrize("name", NAMES)
def test_whole_files_pass_and_cut_ones_do_not(name: str) -> None:
    data, syntax = split(SAMPLES / name)
    check_complete(data, syntax)
    check_complete_file(SAMPLES / name, syntax)
    # image_dfl.dcm has 8 bytes after its deflate stream's end (ignored, as
    # pydicom ignores them): a cut of those is not a cut of the dataset
    cuts = (9, 100, 1000) if syntax == DeflatedExplicitVRLittleEndian else (1, 2, 7, 1000)
    for cut in cuts:
        if cut < len(data):
            with pytest.raises(IncompleteDatasetError):
                check_complete(data[:-cut], syntax)


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_pydicom_s_truncated_samples_are_refused(name: str) -> None:
    data, syntax = split(SAMPLES / name)
    with pytest.raises(IncompleteDatasetError, match="declares"):
        check_complete(data, syntax)


def test_a_cut_is_refused_everywhere_but_between_two_top_level_elements() -> None:
    """A stream cut exactly between two elements is a shorter whole dataset;
    anywhere else (in a header, in a value, in a sequence) it is refused."""
    data, syntax = split(SAMPLES / "rtplan.dcm")
    boundaries = {0} | {
        raw.value_tell + raw.length for raw in data_element_generator(io.BytesIO(data), True, True)
    }
    for cut in range(1, len(data)):
        try:
            check_complete(data[:cut], syntax)
        except IncompleteDatasetError:
            assert cut not in boundaries, cut
        else:
            assert cut in boundaries, cut


def test_a_deflated_stream_must_inflate_to_its_end() -> None:
    data, syntax = split(SAMPLES / "image_dfl.dcm")
    assert syntax == DeflatedExplicitVRLittleEndian
    inflated = zlib.decompress(data, -zlib.MAX_WBITS)
    check_complete(data, syntax)
    with pytest.raises(IncompleteDatasetError, match="deflated"):
        check_complete(data[: len(data) // 2], syntax)
    assert len(inflated) > len(data)


def test_a_cut_file_written_as_it_arrived_is_refused(tmp_path: Path) -> None:
    raw = (SAMPLES / "CT_small.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[:-1000])
    with pytest.raises(IncompleteDatasetError):
        check_complete_file(tmp_path / "cut.dcm", "1.2.840.10008.1.2.1")


@pytest.mark.parametrize("size", [0, 100], ids=["empty", "preamble-only"])
def test_a_file_without_a_dataset_is_refused(tmp_path: Path, size: int) -> None:
    (tmp_path / "short.dcm").write_bytes(bytes(size))
    with pytest.raises(IncompleteDatasetError):
        check_complete_file(tmp_path / "short.dcm", "1.2.840.10008.1.2.1")
