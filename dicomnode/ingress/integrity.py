"""Whether a received dataset is whole: every element's header read and every
declared length present, to the last byte, without decoding any value.

A sender whose stream ends early (a Pixel Data element declaring 131,072 bytes
followed by 130,072 of them) still produces a dataset pydicom opens, with a
short value; stored, it breaks the study's run later with a misleading reason.
The walk here reads only tags, VRs and lengths: sequences and items are
followed to their ends or delimiters, encapsulated Pixel Data to its sequence
delimiter, and a deflated stream must inflate to its end. It costs one pass
over the headers; values, pixel data included, are skipped by their lengths.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from dicomnode.errors import IncompleteDatasetError

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
#: Explicit VRs whose length field is 4 bytes (after 2 reserved bytes).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: Every VR of PS3.5 table 6.2-1: pydicom reads an element of any other VR
#: but cannot convert its value, and stops reading a dataset at it.
_KNOWN_VRS = _LONG_VRS | frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
#: Deepest nesting of sequences the walk follows (pydicom gives up far earlier).
MAX_DEPTH = 1000


@dataclass
class _Frame:
    """One open container: a dataset (top level or an item), a sequence's
    items, or encapsulated Pixel Data's fragments."""

    kind: str  # "dataset", "items" or "fragments"
    end: int | None  # None: ends at a delimiter
    implicit: bool


def check_complete(data: bytes | memoryview, transfer_syntax: str) -> None:
    """Walk an encoded dataset's element headers to its end.

    Parameters
    ----------
    data : bytes or memoryview
        The dataset as received (no preamble or file meta).
    transfer_syntax : str
        The transfer syntax it was sent in.

    Raises
    ------
    IncompleteDatasetError
        The data ends inside an element, item or sequence, a length points past
        its container, or a header is not DICOM (the message says where).
    """
    syntax = UID(transfer_syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        data = _inflate(data)
    big = syntax == ExplicitVRBigEndian
    implicit = syntax.is_implicit_VR if syntax.is_transfer_syntax else False
    view = memoryview(data)
    if not implicit and len(view) >= 6 and not _looks_like_vr(bytes(view[4:6])):
        # a sender that negotiated explicit VR but encoded implicit VR: pydicom
        # reads such data (it looks at the first element), so the walk does too
        implicit = True
    _walk(view, implicit=implicit, big_endian=big)


def _looks_like_vr(vr: bytes) -> bool:
    return vr.isalpha() and vr.isupper()


def file_dataset_offset(encoded: bytes | memoryview | mmap.mmap) -> int | None:
    """Where the dataset starts in a DICOM file that has a preamble and a file
    meta group led by its group length (as pynetdicom and pydicom write them),
    or ``None`` when the file does not start that way."""
    prefix = 128 + 4
    if bytes(encoded[128:132]) != b"DICM" or bytes(encoded[prefix : prefix + 6]) != (
        b"\x02\x00\x00\x00UL"
    ):
        return None
    (length,) = struct.unpack_from("<L", encoded, prefix + 8)
    start = prefix + 12 + int(length)
    return start if start <= len(encoded) else None


def check_complete_file(path: Path, transfer_syntax: str) -> None:
    """:func:`check_complete` on the dataset of a DICOM file (a received
    dataset pynetdicom wrote to disk as it arrived), mapped, not read.

    Raises
    ------
    IncompleteDatasetError
        As :func:`check_complete`, or the file meta is not what pynetdicom writes.
    """
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:  # nothing to map
            raise IncompleteDatasetError("the received file is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mem:
            problem = _problem(mem, transfer_syntax)
    if problem is not None:
        raise IncompleteDatasetError(problem)


def _problem(mem: mmap.mmap, transfer_syntax: str) -> str | None:
    """What is wrong with a mapped file, or ``None``. The exception stays in
    here, so no frame of it keeps a view of the map open when it is closed."""
    start = file_dataset_offset(mem)
    if start is None:
        return "the received file has no readable file meta"
    try:
        with memoryview(mem) as view, view[start:] as body:
            check_complete(body, transfer_syntax)
    except IncompleteDatasetError as exc:
        return str(exc)
    return None


def _inflate(data: bytes | memoryview) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data) + inflater.flush()
    except zlib.error as exc:
        raise IncompleteDatasetError(f"the deflated dataset does not inflate: {exc}") from exc
    if not inflater.eof:
        raise IncompleteDatasetError("the deflated dataset ends before its last block")
    return out


def _walk(data: memoryview, *, implicit: bool, big_endian: bool) -> None:
    end = len(data)
    order = ">" if big_endian else "<"
    tag_struct = struct.Struct(order + "HH")
    u32 = struct.Struct(order + "L")
    u16 = struct.Struct(order + "H")
    stack = [_Frame("dataset", end, implicit)]
    pos = 0
    while stack:
        frame = stack[-1]
        limit = frame.end if frame.end is not None else end
        if frame.end is not None and pos == frame.end:
            stack.pop()
            continue
        if pos + 8 > limit:
            where = "the dataset" if len(stack) == 1 else f"a {frame.kind} container"
            raise IncompleteDatasetError(
                f"{where} ends inside an element header at byte {pos} of {end}"
            )
        group, element = tag_struct.unpack_from(data, pos)
        tag = group << 16 | element
        if frame.kind in ("items", "fragments"):
            length = u32.unpack_from(data, pos + 4)[0]
            pos += 8
            if tag == SEQUENCE_DELIMITER and frame.end is None:
                _check_delimiter_length(length, pos - 8)
                stack.pop()
                continue
            if tag != ITEM:
                raise IncompleteDatasetError(
                    f"expected an item, found tag ({group:04X},{element:04X}) at byte {pos - 8}"
                )
            if frame.kind == "fragments" or length != UNDEFINED:
                if length == UNDEFINED or pos + length > limit:
                    raise IncompleteDatasetError(
                        f"an item at byte {pos - 8} declares {length} bytes; {limit - pos} remain"
                    )
                if frame.kind == "fragments":
                    pos += length
                else:
                    _push(stack, _Frame("dataset", pos + length, frame.implicit))
            else:
                _push(stack, _Frame("dataset", None, frame.implicit))
            continue
        # an element of a dataset
        if tag == ITEM_DELIMITER and frame.end is None and len(stack) > 1:
            _check_delimiter_length(u32.unpack_from(data, pos + 4)[0], pos)
            pos += 8
            stack.pop()
            continue
        if group == 0xFFFE:
            raise IncompleteDatasetError(
                f"unexpected delimiter ({group:04X},{element:04X}) at byte {pos}"
            )
        if group == 0x0002 and len(stack) == 1:
            # the node writes the data set after its own File Meta Information:
            # pydicom would read this element as part of that header
            raise IncompleteDatasetError(
                f"a File Meta Information element ({group:04X},{element:04X}) at byte {pos}: "
                "it belongs in a file's header, not in a data set"
            )
        if frame.implicit:
            vr = b""
            length = u32.unpack_from(data, pos + 4)[0]
            header = 8
        else:
            vr = bytes(data[pos + 4 : pos + 6])
            if not _looks_like_vr(vr):
                raise IncompleteDatasetError(
                    f"element ({group:04X},{element:04X}) at byte {pos} has no valid VR"
                )
            if vr not in _KNOWN_VRS:
                raise IncompleteDatasetError(
                    f"element ({group:04X},{element:04X}) at byte {pos} has an unknown "
                    f"VR {vr.decode()}"
                )
            if vr in _LONG_VRS:
                if pos + 12 > limit:
                    raise IncompleteDatasetError(
                        f"the dataset ends inside an element header at byte {pos} of {end}"
                    )
                length = u32.unpack_from(data, pos + 8)[0]
                header = 12
            else:
                length = u16.unpack_from(data, pos + 6)[0]
                header = 8
        pos += header
        if length == UNDEFINED:
            if tag == PIXEL_DATA and vr != b"UN":
                _push(stack, _Frame("fragments", None, frame.implicit))
            elif vr == b"SQ" or (vr == b"" and _dictionary_vr(tag) in (None, "SQ")):
                # implicit VR: pydicom reads an undefined length element as a
                # sequence unless the dictionary gives it another VR; then it
                # reads its value up to the first sequence delimiter, wherever
                # that is, so such an element is refused below
                _push(stack, _Frame("items", None, frame.implicit))
            elif vr == b"UN":
                # PS3.5 6.2.2: a UN of undefined length holds an implicit VR
                # little endian sequence
                _push(stack, _Frame("items", None, True))
            else:
                raise IncompleteDatasetError(
                    f"element ({group:04X},{element:04X}) of VR "
                    f"{vr.decode() or _dictionary_vr(tag)} has an undefined length"
                )
            continue
        if pos + length > limit:
            raise IncompleteDatasetError(
                f"element ({group:04X},{element:04X}) declares {length} bytes at byte {pos}; "
                f"{limit - pos} remain"
            )
        if vr == b"SQ" or (vr == b"" and _is_sequence(tag)):
            # walked item by item; the frame ends where the sequence does
            _push(stack, _Frame("items", pos + length, frame.implicit))
            continue
        pos += length


def _check_delimiter_length(length: int, pos: int) -> None:
    """A delimiter's length is zero (PS3.5 7.5); pydicom reads the bytes of
    any other as the start of the next element."""
    if length != 0:
        raise IncompleteDatasetError(f"a delimiter at byte {pos} has length {length}, not 0")


def _push(stack: list[_Frame], frame: _Frame) -> None:
    if len(stack) >= MAX_DEPTH:
        raise IncompleteDatasetError(f"sequences nest deeper than {MAX_DEPTH // 2} levels")
    stack.append(frame)


def _is_sequence(tag: int) -> bool:
    return _dictionary_vr(tag) == "SQ"


def _dictionary_vr(tag: int) -> str | None:
    """The VR pydicom's dictionary gives ``tag``, or ``None`` when it has none."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None
