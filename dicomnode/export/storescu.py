"""C-STORE SCU: send DICOM files to a peer over one association."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context

from dicomnode.errors import SendError

LOGGER = logging.getLogger(__name__)

#: pynetdicom's limit on presentation contexts an association may propose.
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class OutgoingFile:
    """A DICOM file to send, with what negotiation needs."""

    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass
class SendReport:
    """What happened to each file."""

    sent: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


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


def _contexts(files: list[OutgoingFile]) -> list[Any]:
    syntaxes: dict[str, list[str]] = {}
    for item in files:
        wanted = syntaxes.setdefault(item.sop_class_uid, [])
        if item.transfer_syntax_uid not in wanted:
            wanted.append(item.transfer_syntax_uid)
    contexts = []
    for sop_class, wanted in syntaxes.items():
        for fallback in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if fallback not in wanted:
                wanted.append(fallback)
        contexts.append(build_context(sop_class, wanted))
    if len(contexts) > MAX_CONTEXTS:
        raise SendError(
            f"{len(contexts)} SOP classes to send, one association carries at most {MAX_CONTEXTS}"
        )
    return contexts


def _unsupported(sop_class_uid: str) -> str:
    """The failure of an object whose SOP class the peer accepted no context for.

    It reads as DIMSE status 0x0122 (SOP Class Not Supported): the peer does
    not take this kind of object, and sending it again will not change that.
    """
    name = UID(sop_class_uid).name
    named = sop_class_uid if name == sop_class_uid else f"{name}, {sop_class_uid}"
    return f"status 0x0122 (SOP class not supported by the peer: {named})"


def _refused_classes(assoc: Any) -> set[str]:
    """SOP classes the peer answered for but accepted no presentation context for.

    A class whose contexts were all refused only for their transfer syntaxes
    (result 0x04) is supported by the peer, just not in those encodings, and
    is not counted. Empty when the peer did not answer the proposal.
    """
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    results: dict[str, set[int]] = {}
    for cx in assoc.rejected_contexts:
        results.setdefault(str(cx.abstract_syntax), set()).add(int(cx.result or 0))
    return {
        sop_class
        for sop_class, codes in results.items()
        if sop_class not in accepted and codes != {0x04}
    }


def send_files(
    files: list[OutgoingFile],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    *,
    report: SendReport | None = None,
    on_sent: Callable[[OutgoingFile, int], None] | None = None,
    timeout: float = 60.0,
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> SendReport:
    """Send files over one association, each as stored on disk.

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
        Called with each file and its DIMSE status (``-1`` when none came back).
    timeout : float
        Connection (TLS handshake included), ACSE, DIMSE and network timeout
        in seconds.
    tls : tuple of (ssl.SSLContext, str), optional
        DICOM over TLS: the client context and the name the peer's
        certificate must carry; ``None`` sends over plain TCP.

    Returns
    -------
    SendReport
        Which files were stored and which failed, with the reason. A file
        whose SOP class the peer accepted no presentation context for fails
        with ``"status 0x0122 (SOP class not supported by the peer: ...)"``
        and is not sent; so do all files when the peer accepted none of the
        proposed SOP classes (pynetdicom then aborts the association).

    Raises
    ------
    SendError
        The association could not be established.
    """
    report = report or SendReport()
    if not files:
        return report
    ae = AE(ae_title=calling_aet)
    ae.requested_contexts = _contexts(files)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=tls)
    refused = _refused_classes(assoc) if not assoc.is_rejected else set()
    if not assoc.is_established:
        if assoc.is_aborted and refused >= {item.sop_class_uid for item in files}:
            # the peer answered, but takes none of these SOP classes
            for item in files:
                report.failed.append((item.path, _unsupported(item.sop_class_uid)))
                if on_sent is not None:
                    on_sent(item, -1)
            return report
        reason = "rejected" if assoc.is_rejected else "could not be established"
        over = " over TLS" if tls is not None else ""
        raise SendError(f"association with {called_aet} at {host}:{port}{over} {reason}")
    try:
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for item in files:
            status_code = -1
            if item.sop_class_uid in refused:
                report.failed.append((item.path, _unsupported(item.sop_class_uid)))
            elif not assoc.is_established:
                report.failed.append((item.path, "association lost"))
            else:
                try:
                    status = assoc.send_c_store(item.path)
                except (ValueError, RuntimeError, OSError) as exc:
                    report.failed.append((item.path, str(exc)))
                else:
                    status_code = int(status.Status) if "Status" in status else -1
                    if status_code == -1:
                        report.failed.append((item.path, "no response (timeout or abort)"))
                    elif status_code == 0 or 0xB000 <= status_code <= 0xBFFF:
                        report.sent.append(item.path)
                    else:
                        report.failed.append((item.path, f"status 0x{status_code:04X}"))
            if on_sent is not None:
                on_sent(item, status_code)
    finally:
        if assoc.is_established:
            assoc.release()
    return report
