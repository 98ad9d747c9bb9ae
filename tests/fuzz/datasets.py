"""Encoded datasets to fuzz from, and the oracle that says whether pydicom
reads one to its end.

The seeds are pydicom's own sample files, re-encoded by pydicom in each
transfer syntax a sender may use for native data (Implicit and Explicit VR
Little Endian, Explicit VR Big Endian, Deflated), plus encapsulated ones as
they were written (JPEG, RLE). Each seed is a dataset as it travels in P-DATA:
no preamble, no file meta.
"""

from __future__ import annotations

import io
import logging
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"

#: Native samples re-encoded in every native syntax: flat image, nested
#: sequences (RT plan, SR), private sequences, a UN sequence.
NATIVE = ["CT_small.dcm", "rtplan.dcm", "test-SR.dcm", "nested_priv_SQ.dcm", "UN_sequence.dcm"]
#: Encapsulated samples, sent as they are (one frame JPEG, two-frame RLE).
ENCAPSULATED = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_2frame.dcm"]
NATIVE_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
]


@dataclass(frozen=True)
class Seed:
    """One valid dataset, encoded."""

    name: str
    syntax: str
    data: bytes

    def __repr__(self) -> str:
        return f"Seed({self.name}, {UID(self.syntax).name}, {len(self.data)} bytes)"


def encode(ds: Dataset, syntax: str) -> bytes:
    """``ds`` without its file meta, encoded in ``syntax`` as a sender puts it in P-DATA."""
    uid = UID(syntax)
    buffer = DicomBytesIO()
    buffer.is_little_endian = uid.is_little_endian
    buffer.is_implicit_VR = uid.is_implicit_VR
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    if uid == DeflatedExplicitVRLittleEndian:
        deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflater.compress(data) + deflater.flush()
    return data


@cache
def seeds() -> tuple[Seed, ...]:
    """Every seed, once (the samples are read and encoded on first use)."""
    found: list[Seed] = []
    for name in NATIVE:
        ds = pydicom.dcmread(SAMPLES / name)
        if "PixelData" in ds and len(ds.PixelData) > 4096:
            # keep examples small: a short native Pixel Data is still Pixel Data
            ds.PixelData = ds.PixelData[:4096]
        del ds.file_meta
        for syntax in NATIVE_SYNTAXES:
            found.append(Seed(name, str(syntax), encode(ds, syntax)))
    for name in ENCAPSULATED:
        ds = pydicom.dcmread(SAMPLES / name)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        del ds.file_meta
        found.append(Seed(name, syntax, encode(ds, ExplicitVRLittleEndian)))
    return tuple(found)


def _nested(ds: Dataset) -> Iterator[Dataset]:
    """Every sequence item under ``ds``, parsed; other values stay raw."""
    for tag in list(ds.keys()):
        elem = ds._dict[tag]  # as read: converting it would judge its value
        if isinstance(elem, RawDataElement):
            is_sequence = elem.VR == "SQ" or (
                elem.length == 0xFFFFFFFF and elem.VR in (None, "UN") and tag != 0x7FE00010
            )
            if not is_sequence and elem.VR is None:
                is_sequence = pydicom.datadict.dictionary_has_tag(tag) and (
                    pydicom.datadict.dictionary_VR(tag) == "SQ"
                )
            if not is_sequence:
                continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                yield item
                yield from _nested(item)


class _Errors(logging.Handler):
    """Collects what pydicom logs at ERROR while reading (it logs an unknown
    VR and stops reading, instead of raising)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def pydicom_reads_to_the_end(data: bytes, syntax: str) -> str | None:
    """Whether pydicom, as the node runs it (default validation mode), reads
    ``data`` as one whole dataset: every element of every sequence, and the
    fragments of encapsulated Pixel Data, parsed up to the last byte, with
    neither an exception nor a reading error swallowed into a warning or a
    log line. ``None`` when it does; otherwise what went wrong.

    Values are not converted (a Specific Character Set pydicom does not know
    or an element it has no VR for are matters of value, not of structure),
    except sequences, which are parsed item by item.
    """
    uid = UID(syntax)
    if uid == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data) + inflater.flush()
        except zlib.error as exc:
            return f"does not inflate: {exc}"
        if not inflater.eof:
            return "the deflate stream has no end"
    fp = io.BytesIO(data)
    errors = _Errors()
    pydicom_logger = logging.getLogger("pydicom")
    pydicom_logger.addHandler(errors)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = read_dataset(fp, uid.is_implicit_VR, uid.is_little_endian)
            if fp.tell() != len(data):
                return f"pydicom stopped at byte {fp.tell()} of {len(data)}"
            for each in [ds, *_nested(ds)]:
                short = _short_value(each)
                if short is not None:
                    return short
            pixels = ds._dict.get(BaseTag(0x7FE00010))
            if pixels is not None and uid.is_compressed and pixels.length == 0xFFFFFFFF:
                endian = "<" if uid.is_little_endian else ">"
                for _ in generate_fragments(pixels.value, endianness=endian):
                    pass
    except Exception as exc:
        if _is_value_problem(exc):
            return None
        return f"{type(exc).__name__}: {exc}"
    finally:
        pydicom_logger.removeHandler(errors)
    for warning in caught:
        text = str(warning.message)
        if "End of file" in text or "in file <no filename>" in text:
            return f"pydicom warned: {text}"
    for message in errors.messages:
        if "Value Representation" in message or "VR" in message:
            return f"pydicom logged: {message}"
    return None


def _short_value(ds: Dataset) -> str | None:
    """An element of ``ds`` whose value pydicom read shorter than its declared
    length (it does so silently where the data ends early)."""
    for tag, elem in ds._dict.items():
        if (
            isinstance(elem, RawDataElement)
            and elem.length != 0xFFFFFFFF
            and elem.value is not None
            and len(elem.value) != elem.length
        ):
            return f"{tag} declares {elem.length} bytes, pydicom read {len(elem.value)}"
    return None


def _is_value_problem(exc: Exception) -> bool:
    """An exception pydicom raises converting a value (Specific Character
    Set), not reading the structure."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith("charset.py"):
            return True
        tb = tb.tb_next
    return False
