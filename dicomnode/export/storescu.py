"""C-STORE SCU: send DICOM files to a peer, each in its own transfer syntax.

Like DCMTK's ``dcmsend``, every (SOP class, transfer syntax) pair found in the
files is proposed in a presentation context of its own, so a peer that
accepts JPEG 2000 gets JPEG 2000 and one that does not can still say yes to
the others. Next to those, each SOP class gets one uncompressed context
(Explicit and Implicit VR Little Endian) when at least one of its files is
native (little or big endian, deflated) or has a pixel data decoder here; a
file is re-encoded only when the peer accepted that context and not the
file's own.
pynetdicom proposes at most 128 contexts per association; more are sent over
several associations, one after the other.

A C-STORE status is kept as the integer the peer sent, and sorted with
pynetdicom's categories (:func:`status_category`); what it means for a retry
is for the caller to decide.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from dicomnode.errors import SendError

LOGGER = logging.getLogger(__name__)

#: pynetdicom's limit on presentation contexts an association may propose.
MAX_CONTEXTS = 128

#: The uncompressed context of a SOP class: pynetdicom re-encodes between
#: these two on its own, without touching pixel data.
UNCOMPRESSED: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: Native encodings this module re-encodes as Explicit VR Little Endian itself.
_NATIVE = frozenset({DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})

#: Byte width of the values of each VR whose bytes a big endian file swaps.
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}

#: Presentation context result: the abstract syntax is supported, the
#: proposed transfer syntaxes are not.
_SYNTAXES_NOT_SUPPORTED = 0x04


class StatusCategory(StrEnum):
    """The category of a DIMSE status, as pynetdicom's ``status.py`` names them."""

    SUCCESS = "Success"
    WARNING = "Warning"
    FAILURE = "Failure"
    CANCEL = "Cancel"
    PENDING = "Pending"
    UNKNOWN = "Unknown"


def status_category(status: int) -> StatusCategory:
    """Category of a C-STORE response status.

    Parameters
    ----------
    status : int
        The Status (0000,0900) of the response.

    Returns
    -------
    StatusCategory
        ``SUCCESS`` for 0x0000, ``WARNING`` for 0x0001, 0x0107, 0x0116 and
        0xB000-0xBFFF, ``FAILURE`` for the general failure codes,
        0xA000-0xAFFF and 0xC000-0xCFFF, ``UNKNOWN`` for anything else.
    """
    return StatusCategory(code_to_category(status))


def status_text(status: int) -> str:
    """``status 0xA700 (Out of Resources)``: a status for people to read."""
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", ""))[1]
    return f"status 0x{status:04X}" + (f" ({meaning})" if meaning else "")


class FailureKind(Enum):
    """Why a file was not stored."""

    #: The peer answered the C-STORE with a failure status.
    STATUS = "status"
    #: The peer accepted no presentation context the file can travel in (its
    #: SOP class, or its transfer syntax and no usable uncompressed one).
    NOT_ACCEPTED = "not accepted"
    #: No answer came back: timeout, abort, association lost.
    NO_RESPONSE = "no response"
    #: The file could not be read or encoded here.
    LOCAL = "local"


@dataclass(frozen=True)
class SendFailure:
    """A file that was not stored.

    Parameters
    ----------
    path : Path
        The file.
    kind : FailureKind
        Why, as a value.
    reason : str
        Why, for people.
    status : int or None
        The DIMSE status the peer answered with; ``None`` when no status
        came back (always, and only, for kinds other than ``STATUS``).

    Raises
    ------
    ValueError
        ``status`` is given for another kind than ``STATUS``, or missing for it.
    """

    path: Path
    kind: FailureKind
    reason: str
    status: int | None = None

    def __post_init__(self) -> None:
        if (self.status is not None) != (self.kind is FailureKind.STATUS):
            raise ValueError(
                f"status: {self.status!r} does not go with a {self.kind.value} failure"
            )


@dataclass(frozen=True)
class OutgoingFile:
    """A DICOM file to send, with what negotiation needs."""

    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass
class SendReport:
    """What happened to each file.

    ``converted`` lists the stored files that travelled decoded, as Explicit
    or Implicit VR Little Endian, because the peer took none of their own
    transfer syntax.
    """

    sent: list[Path] = field(default_factory=list)
    failed: list[SendFailure] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    converted: list[Path] = field(default_factory=list)


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def collect_files(paths: Iterable[Path], report: SendReport) -> list[OutgoingFile]:
    """Read the header of every file under ``paths``; non-DICOM files are skipped."""
    found: list[OutgoingFile] = []
    for path in _walk(paths):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            sop_class = str(ds.SOPClassUID)
            syntax = str(ds.file_meta.TransferSyntaxUID)
            if not str(ds.SOPInstanceUID):
                raise ValueError("empty SOP Instance UID")
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            report.skipped.append((path, f"not a DICOM file with meta information ({exc})"))
            continue
        found.append(OutgoingFile(path, sop_class, syntax))
    return found


def can_decode(transfer_syntax_uid: str) -> bool:
    """Whether a file in this syntax can be sent as Explicit VR Little Endian.

    True for the native syntaxes (little and big endian, deflated) and for
    compressed syntaxes that one of pydicom's installed pixel data decoders
    reads; False for the others (video, private syntaxes).
    """
    syntax = UID(transfer_syntax_uid)
    if syntax in UNCOMPRESSED or syntax in _NATIVE:
        return True
    if not syntax.is_transfer_syntax or not syntax.is_compressed:
        return False
    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


_Spec = tuple[str, tuple[str, ...]]


def _specs(sop_class: str, syntax: str) -> list[_Spec]:
    """The presentation contexts a file of this class and syntax can travel in."""
    own = (sop_class, (syntax,))
    return [own, (sop_class, UNCOMPRESSED)] if can_decode(syntax) else [own]


def plan_associations(files: list[OutgoingFile]) -> list[tuple[list[_Spec], list[OutgoingFile]]]:
    """Split the files over associations of at most :data:`MAX_CONTEXTS` contexts.

    Parameters
    ----------
    files : list of OutgoingFile
        The files, in the order to send them.

    Returns
    -------
    list of (contexts, files)
        Per association, the contexts to propose, each as (abstract syntax,
        transfer syntaxes), and its files in their original order. One
        association unless the files need more than 128 contexts.
    """
    keys: dict[tuple[str, str], list[int]] = {}
    for n, item in enumerate(files):
        keys.setdefault((item.sop_class_uid, item.transfer_syntax_uid), []).append(n)
    plans: list[tuple[list[_Spec], list[int]]] = []
    specs: dict[_Spec, None] = {}
    batch: list[int] = []
    for key, members in keys.items():
        wanted = [s for s in _specs(*key) if s not in specs]
        if specs and len(specs) + len(wanted) > MAX_CONTEXTS:
            plans.append((list(specs), batch))
            specs, batch = {}, []
            wanted = _specs(*key)
        specs.update(dict.fromkeys(wanted))
        batch.extend(members)
    if batch:
        plans.append((list(specs), batch))
    return [(s, [files[n] for n in sorted(b)]) for s, b in plans]


def _swap_to_little_endian(ds: Dataset) -> None:
    """Byte-swap, in place, the values a big endian file stores as raw bytes.

    Numbers of the other VRs are decoded values, which pydicom writes in any
    byte order. Pixel Data of 32 or 64 bits allocated swaps whole values, as
    pydicom decodes it. Values of VR UN are kept as they are: their structure
    is unknown.
    """
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_to_little_endian(item)
            continue
        width = _SWAP_WIDTH.get(str(elem.VR))
        if width is None or not elem.value:
            continue
        if elem.tag == 0x7FE00010 and ds.get("BitsAllocated", 16) in (32, 64):
            width = int(ds.BitsAllocated) // 8
        values = np.frombuffer(elem.value, dtype=f">u{width}")
        elem.value = values.astype(f"<u{width}").tobytes()


def decoded(path: Path) -> Dataset:
    """The file's dataset re-encoded as Explicit VR Little Endian.

    Compressed pixel data is decompressed by pydicom's decoders (colour
    YBR becomes RGB, as DCMTK's ``dcmdjpeg`` does), big endian values are
    byte-swapped, deflated data is inflated. The SOP Instance UID and Lossy
    Image Compression (0028,2110) stay as they are.

    Parameters
    ----------
    path : Path
        A file :func:`can_decode` says yes to.

    Returns
    -------
    pydicom.Dataset
        With file meta Transfer Syntax UID Explicit VR Little Endian.

    Raises
    ------
    ValueError, RuntimeError, NotImplementedError
        The pixel data could not be decoded.
    """
    ds = dcmread(path)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_compressed:
        ds.decompress(generate_instance_uid=False)
    elif not syntax.is_little_endian:
        _swap_to_little_endian(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True, ds.original_character_set)
    return ds


def _named(uid: str) -> str:
    name = UID(uid).name
    return uid if name == uid else f"{name}, {uid}"


class _Negotiated:
    """What the peer accepted, and what to do with each file."""

    def __init__(self, assoc: Any) -> None:
        self.accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            self.accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        self.rejected: dict[str, set[int]] = {}
        for cx in assoc.rejected_contexts:
            self.rejected.setdefault(str(cx.abstract_syntax), set()).add(int(cx.result or 0))

    def route(self, item: OutgoingFile) -> str | None:
        """``"as is"``, ``"decode"``, or ``None`` when the file cannot travel."""
        taken = self.accepted.get(item.sop_class_uid, set())
        if item.transfer_syntax_uid in taken:
            return "as is"
        if item.transfer_syntax_uid in UNCOMPRESSED and taken & set(UNCOMPRESSED):
            return "as is"  # pynetdicom re-encodes between explicit and implicit VR
        if taken & set(UNCOMPRESSED) and can_decode(item.transfer_syntax_uid):
            return "decode"
        return None

    def refusal(self, item: OutgoingFile) -> str:
        """Why ``item`` cannot travel, for people."""
        sop_class = item.sop_class_uid
        if sop_class not in self.accepted and self.rejected.get(sop_class, set()) != {
            _SYNTAXES_NOT_SUPPORTED
        }:
            return f"SOP class not supported by the peer: {_named(sop_class)}"
        syntax = UID(item.transfer_syntax_uid).name
        if can_decode(item.transfer_syntax_uid):
            return f"the peer accepted {_named(sop_class)} neither in {syntax} nor uncompressed"
        return (
            f"the peer did not accept {_named(sop_class)} in {syntax}, and no decoder "
            "here reads it to send it uncompressed"
        )


def send_files(
    files: list[OutgoingFile],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    *,
    report: SendReport | None = None,
    on_sent: Callable[[OutgoingFile, int | None], None] | None = None,
    timeout: float = 60.0,
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> SendReport:
    """Send files, each in its own transfer syntax where the peer accepts it.

    Parameters
    ----------
    files : list of OutgoingFile
        From :func:`collect_files`.
    host, port : str, int
        The peer.
    called_aet, calling_aet : str
        AE titles of the peer and of this sender.
    report : SendReport, optional
        Adds to an existing report.
    on_sent : callable, optional
        Called with each file and its DIMSE status (``None`` when none came back).
    timeout : float
        Connection (TLS handshake included), ACSE, DIMSE and network timeout
        in seconds.
    tls : tuple of (ssl.SSLContext, str), optional
        DICOM over TLS: the client context and the name the peer's
        certificate must carry; ``None`` sends over plain TCP.

    Returns
    -------
    SendReport
        Which files were stored, which failed and why. A file the peer
        accepted no usable presentation context for fails as
        ``FailureKind.NOT_ACCEPTED`` and is not sent; so do all files of an
        association in which the peer accepted nothing (pynetdicom then
        aborts it).

    Raises
    ------
    SendError
        An association could not be established. The report keeps what
        earlier associations (more than 128 contexts) delivered.
    """
    report = report or SendReport()
    for specs, batch in plan_associations(files):
        _send_batch(
            specs, batch, host, port, called_aet, calling_aet, report, on_sent, timeout, tls
        )
    return report


def _send_batch(
    specs: list[_Spec],
    files: list[OutgoingFile],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    report: SendReport,
    on_sent: Callable[[OutgoingFile, int | None], None] | None,
    timeout: float,
    tls: tuple[ssl.SSLContext, str] | None,
) -> None:
    ae = AE(ae_title=calling_aet)
    ae.requested_contexts = [build_context(sop, list(syntaxes)) for sop, syntaxes in specs]
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=tls)
    if not assoc.is_established:
        if assoc.is_aborted and len(assoc.rejected_contexts) == len(specs):
            # the peer answered every context, and accepted none
            negotiated = _Negotiated(assoc)
            for item in files:
                _fail(report, on_sent, item, FailureKind.NOT_ACCEPTED, negotiated.refusal(item))
            return
        reason = "rejected" if assoc.is_rejected else "could not be established"
        over = " over TLS" if tls is not None else ""
        raise SendError(f"association with {called_aet} at {host}:{port}{over} {reason}")
    negotiated = _Negotiated(assoc)
    try:
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for item in files:
            route = negotiated.route(item)
            if route is None:
                _fail(report, on_sent, item, FailureKind.NOT_ACCEPTED, negotiated.refusal(item))
            elif not assoc.is_established:
                _fail(report, on_sent, item, FailureKind.NO_RESPONSE, "association lost")
            else:
                _store(assoc, item, route == "decode", report, on_sent)
    finally:
        if assoc.is_established:
            assoc.release()


def _fail(
    report: SendReport,
    on_sent: Callable[[OutgoingFile, int | None], None] | None,
    item: OutgoingFile,
    kind: FailureKind,
    reason: str,
    status: int | None = None,
) -> None:
    report.failed.append(SendFailure(item.path, kind, reason, status))
    if on_sent is not None:
        on_sent(item, status)


def _store(
    assoc: Any,
    item: OutgoingFile,
    decode: bool,
    report: SendReport,
    on_sent: Callable[[OutgoingFile, int | None], None] | None,
) -> None:
    """C-STORE one file, as it is or decoded, and record the outcome."""
    payload: Path | Dataset = item.path
    if decode:
        try:
            payload = decoded(item.path)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
            reason = (
                f"the peer accepted {_named(item.sop_class_uid)} only uncompressed, and "
                f"decoding {UID(item.transfer_syntax_uid).name} failed: {exc}"
            )
            _fail(report, on_sent, item, FailureKind.NOT_ACCEPTED, reason)
            return
        except OSError as exc:
            _fail(report, on_sent, item, FailureKind.LOCAL, f"{type(exc).__name__}: {exc}")
            return
    try:
        response = assoc.send_c_store(payload)
    except (ValueError, RuntimeError, AttributeError, OSError) as exc:
        kind = FailureKind.LOCAL if assoc.is_established else FailureKind.NO_RESPONSE
        _fail(report, on_sent, item, kind, f"{type(exc).__name__}: {exc}")
        return
    if "Status" not in response:
        _fail(report, on_sent, item, FailureKind.NO_RESPONSE, "no response (timeout or abort)")
        return
    status = int(response.Status)
    if status_category(status) in (StatusCategory.SUCCESS, StatusCategory.WARNING):
        report.sent.append(item.path)
        if decode:
            report.converted.append(item.path)
            LOGGER.debug("%s sent decoded: the peer took none of its own syntax", item.path)
        if on_sent is not None:
            on_sent(item, status)
        return
    _fail(report, on_sent, item, FailureKind.STATUS, status_text(status), status)
