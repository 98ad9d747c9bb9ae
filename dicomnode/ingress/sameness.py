"""Whether a re-sent instance is the one the spool already keeps.

The node keeps the first copy of a SOP Instance UID. A copy sent again with
the same content is harmless; one with other content (a re-processed image, a
sender re-using UIDs) is not, and the sender and the admin are told. The spool
files are the node's own (preamble, file meta, then the dataset as received),
so two copies in one transfer syntax are the same exactly when their dataset
bytes are. Copies in different transfer syntaxes are compared element by
element after decoding the headers: every public element but Pixel Data by
value; Pixel Data by its bytes when both are native little endian, and not at
all otherwise (telling compressed pixels apart would mean decoding them).

A received copy is a file (the listener writes each dataset to disk as it
arrives), as large as ``ingress.max_dataset_size``: both files are mapped and
compared a chunk at a time, and when their headers are decoded, values longer
than 64 KiB (Pixel Data among them) stay in the files and are compared there.
Only a deflated copy is inflated into memory, as pydicom reads it.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomnode.ingress.integrity import file_dataset_offset

PIXEL_DATA = 0x7FE00010
TRAILING_PADDING = 0xFFFCFFFC
_NATIVE_LITTLE = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
_PREFIX = 128 + 4  # preamble and "DICM"
#: Bytes compared at a time.
_CHUNK = 1024 * 1024
#: Values longer than this are left in the file when headers are decoded.
_DEFER_SIZE = 64 * 1024

#: A whole encoded file: in memory, or mapped.
_Buffer = bytes | mmap.mmap


@contextmanager
def _mapped(source: Path | bytes) -> Iterator[_Buffer]:
    """``source`` as a buffer: bytes as they are, a file mapped read-only."""
    if isinstance(source, bytes):
        yield source
        return
    with source.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:  # an empty file cannot be mapped
            yield b""
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mem:
            yield mem


def _equal(a: _Buffer, a_start: int, a_end: int, b: _Buffer, b_start: int, b_end: int) -> bool:
    """Whether ``a[a_start:a_end]`` and ``b[b_start:b_end]`` hold the same bytes,
    compared :data:`_CHUNK` bytes at a time (slices copy; views would pin a map)."""
    length = a_end - a_start
    if length != b_end - b_start:
        return False
    for offset in range(0, length, _CHUNK):
        size = min(_CHUNK, length - offset)
        if (
            a[a_start + offset : a_start + offset + size]
            != b[b_start + offset : b_start + offset + size]
        ):
            return False
    return True


def _split(encoded: _Buffer) -> tuple[str, int] | None:
    """The transfer syntax of a file the node wrote and where its dataset
    starts, or ``None`` when the file meta is not what the node writes (group
    length first)."""
    start = file_dataset_offset(encoded)
    if start is None:
        return None
    try:
        meta = read_dataset(BytesIO(encoded[_PREFIX:start]), False, True)
    except (InvalidDicomError, ValueError, struct.error, EOFError):
        return None
    syntax = meta.get("TransferSyntaxUID")
    if syntax is None:
        return None
    return str(syntax), start


def same_content(kept: Path, received: Path | bytes) -> bool:
    """Whether ``received`` holds the same instance as the spool file ``kept``.

    Parameters
    ----------
    kept : Path
        The copy the spool keeps.
    received : Path or bytes
        The copy just received: the file it was written to, or its preamble,
        file meta and dataset.

    Returns
    -------
    bool
        ``False`` when they differ; ``True`` when they are the same or when
        the difference cannot be told without decoding pixel data. Copies
        either of which pydicom cannot read count as different.

    Raises
    ------
    OSError
        Either file cannot be read.
    """
    with _mapped(kept) as old, _mapped(received) as new:
        if _equal(old, 0, len(old), new, 0, len(new)):
            return True
        old_split, new_split = _split(old), _split(new)
        if old_split is not None and new_split is not None and old_split[0] == new_split[0]:
            return _equal(old, old_split[1], len(old), new, new_split[1], len(new))
        try:
            a = _decode(kept, old_split)
            b = _decode(received, new_split)
        except (InvalidDicomError, ValueError, EOFError, struct.error):
            return False
        return _same_elements(a, old, b, new)


def _decode(source: Path | bytes, split: tuple[str, int] | None) -> Dataset:
    """The dataset of ``source``, long values left in the file where its
    offsets are the file's (not for a deflated dataset, nor an unknown syntax)."""
    if isinstance(source, bytes):
        return dcmread(BytesIO(source), force=True)
    in_place = split is not None and split[0] != DeflatedExplicitVRLittleEndian
    return dcmread(source, force=True, defer_size=_DEFER_SIZE if in_place else None)


def _value(ds: Dataset, buffer: _Buffer, tag: int) -> tuple[_Buffer, int, int]:
    """Where the value of ``ds``'s element ``tag`` lies: in the mapped file
    when it was left there, else in memory."""
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None and raw.length > 0:
        return buffer, raw.value_tell, raw.value_tell + raw.length
    value = ds[tag].value
    data = value if isinstance(value, bytes) else b""
    return data, 0, len(data)


def _same_elements(a: Dataset, a_buffer: _Buffer, b: Dataset, b_buffer: _Buffer) -> bool:
    def keys(ds: Dataset) -> set[int]:
        return {
            int(tag)
            for tag in ds.keys()
            if tag.element != 0 and int(tag) != TRAILING_PADDING and not tag.is_private
        }

    if keys(a) != keys(b):
        return False
    syntaxes = {str(ds.file_meta.get("TransferSyntaxUID", "")) for ds in (a, b)}
    for tag in keys(a):
        if tag == PIXEL_DATA:
            if syntaxes <= _NATIVE_LITTLE and not _equal(
                *_value(a, a_buffer, tag), *_value(b, b_buffer, tag)
            ):
                return False
            continue
        if a[tag].value != b[tag].value:
            return False
    return True
