"""Whether a re-sent copy is the kept one, told from the two files.

The received copy is the file the listener wrote while the dataset arrived, so
the comparison must hold for files as large as a dataset may be without
reading either into memory.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomnode.ingress.sameness import same_content

#: A CT whose Pixel Data is this large (a 4096x4096 16-bit slice).
LARGE = 4096


def write(ds: pydicom.Dataset, path: Path, syntax: str) -> Path:
    """``ds`` as the node's spool writes a file: preamble, file meta led by its
    group length, then the dataset in ``syntax``."""
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return path


@pytest.fixture
def ct(ct_series) -> pydicom.Dataset:
    (path,) = ct_series(slices=1, size=32).paths
    return pydicom.dcmread(path)


def large(ct: pydicom.Dataset) -> pydicom.Dataset:
    ct.Rows = ct.Columns = LARGE
    ct.PixelData = bytes(LARGE * LARGE * 2)
    return ct


def flip_last_pixel(ds: pydicom.Dataset) -> pydicom.Dataset:
    pixels = bytearray(ds.PixelData)
    pixels[-1] ^= 0xFF
    ds.PixelData = bytes(pixels)
    return ds


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
)
def test_one_syntax_same_and_changed(ct, tmp_path, syntax):
    kept = write(ct, tmp_path / "kept.dcm", syntax)
    again = write(ct, tmp_path / "again.dcm", syntax)
    assert same_content(kept, again)
    assert same_content(kept, again.read_bytes())
    changed = write(flip_last_pixel(ct), tmp_path / "changed.dcm", syntax)
    assert not same_content(kept, changed)
    assert not same_content(kept, changed.read_bytes())


def test_other_file_meta_same_dataset_is_the_same(ct, tmp_path):
    kept = write(ct, tmp_path / "kept.dcm", ExplicitVRLittleEndian)
    ct.file_meta.ImplementationVersionName = "OTHER_SENDER"
    again = write(ct, tmp_path / "again.dcm", ExplicitVRLittleEndian)
    assert kept.read_bytes() != again.read_bytes()
    assert same_content(kept, again)


@pytest.mark.parametrize("other", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_across_syntaxes_values_and_pixels_are_compared(ct, tmp_path, other):
    ct = large(ct)
    kept = write(ct, tmp_path / "kept.dcm", ExplicitVRLittleEndian)
    assert same_content(kept, write(ct, tmp_path / "again.dcm", other))
    ct.SeriesDescription = "re-processed"
    assert not same_content(kept, write(ct, tmp_path / "described.dcm", other))
    del ct.SeriesDescription
    assert not same_content(kept, write(flip_last_pixel(ct), tmp_path / "pixels.dcm", other))


def test_an_empty_or_unreadable_copy_differs(ct, tmp_path):
    kept = write(ct, tmp_path / "kept.dcm", ExplicitVRLittleEndian)
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert not same_content(kept, tmp_path / "empty.dcm")
    with pytest.raises(OSError):
        same_content(tmp_path / "gone.dcm", kept)


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["same-syntax", "across"]
)
def test_large_files_are_compared_without_reading_them(ct, tmp_path, syntax):
    """Two 32 MiB copies differing in their last byte, compared from their
    files: the memory the comparison allocates stays a few chunks."""
    ct = large(ct)
    kept = write(ct, tmp_path / "kept.dcm", ExplicitVRLittleEndian)
    same = write(ct, tmp_path / "same.dcm", syntax)
    changed = write(flip_last_pixel(ct), tmp_path / "changed.dcm", syntax)
    del ct
    tracemalloc.start()
    try:
        equal = same_content(kept, same)
        differs = not same_content(kept, changed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert equal
    assert differs
    assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.1f} MiB allocated comparing 32 MiB files"
