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
"""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
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


def _split(encoded: bytes) -> tuple[str, bytes] | None:
    """The transfer syntax and the dataset bytes of a file the node wrote, or
    ``None`` when the file meta is not what the node writes (group length first)."""
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
    return str(syntax), encoded[start:]


def same_content(kept: Path, received: bytes) -> bool:
    """Whether ``received`` (an encoded file as the handler writes it) holds
    the same instance as the spool file ``kept``.

    Parameters
    ----------
    kept : Path
        The copy the spool keeps.
    received : bytes
        The preamble, file meta and dataset of the copy just received.

    Returns
    -------
    bool
        ``False`` when they differ; ``True`` when they are the same or when
        the difference cannot be told without decoding pixel data. Copies
        either of which pydicom cannot read count as different.

    Raises
    ------
    OSError
        The kept file cannot be read.
    """
    stored = kept.read_bytes()
    if stored == received:
        return True
    old, new = _split(stored), _split(received)
    if old is not None and new is not None and old[0] == new[0]:
        return old[1] == new[1]
    try:
        a = dcmread(BytesIO(stored), force=True)
        b = dcmread(BytesIO(received), force=True)
    except (InvalidDicomError, ValueError, EOFError, struct.error):
        return False
    return _same_elements(a, b)


def _same_elements(a: Dataset, b: Dataset) -> bool:
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
            if syntaxes <= _NATIVE_LITTLE and a[tag].value != b[tag].value:
                return False
            continue
        if a[tag].value != b[tag].value:
            return False
    return True
