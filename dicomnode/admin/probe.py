"""Testing destinations: can the node reach each one now?

A DICOM destination gets a C-ECHO (Verification) from the node's calling AE
title; an HL7 one a TCP (or TLS) connection to its MLLP port, closed at once
with nothing sent; a folder is checked to exist (or be creatable) and be
writable.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.config.destinations import DicomDestination, FolderDestination, HL7Destination


def echo_dicom(target: DicomDestination, calling_ae: str) -> tuple[bool, str]:
    """C-ECHO a DICOM destination; return whether it answered Success, and what happened."""
    reached, why = _tcp(target.host, target.port, target.timeout_seconds)
    if not reached:
        return False, why
    ae = AE(ae_title=target.calling_ae_title or calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = target.timeout_seconds
    ae.dimse_timeout = target.timeout_seconds
    ae.network_timeout = target.timeout_seconds
    ae.connection_timeout = target.timeout_seconds
    tls_args = None
    if target.tls is not None:
        try:
            tls_args = (target.tls.context(), target.tls.hostname_for(target.host))
        except ValueError as exc:
            return False, f"tls: {exc}"
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title, tls_args=tls_args)
    try:
        if assoc.is_rejected:
            return False, "association rejected by the peer (is our AE title allowed there?)"
        if assoc.is_aborted:
            return False, "association aborted by the peer (does it speak DICOM there?)"
        if not assoc.is_established:
            return False, "no association: the peer did not answer the request in time"
        status = assoc.send_c_echo()
        if status is None or "Status" not in status:
            return False, "no C-ECHO response in time"
        code = int(status.Status)
        if code != 0:
            return False, f"C-ECHO answered with status 0x{code:04X}"
        return True, "C-ECHO answered Success (0x0000)"
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _tcp(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Whether anything accepts a TCP connection there (closed again at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, "connected"
    except TimeoutError:
        return False, f"cannot connect to {host}:{port}: no answer within {timeout:g} s"
    except OSError as exc:
        return False, f"cannot connect to {host}:{port}: {exc.strerror or exc}"


def connect_hl7(target: HL7Destination) -> tuple[bool, str]:
    """Open (and close) a connection to an HL7 destination's MLLP port; nothing is sent."""
    where = f"{target.host}:{target.port}"
    try:
        with socket.create_connection(
            (target.host, target.port), timeout=target.timeout_seconds
        ) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.tls is None:
                return True, "MLLP port accepted a connection (nothing sent)"
            context = target.tls.context()
            with context.wrap_socket(raw, server_hostname=target.tls.hostname_for(target.host)):
                return True, "MLLP port accepted a TLS connection (nothing sent)"
    except ssl.SSLError as exc:
        return False, f"TLS handshake failed: {exc.reason or exc}"
    except TimeoutError:
        return False, f"cannot connect to {where}: no answer within {target.timeout_seconds:g} s"
    except OSError as exc:
        return False, f"cannot connect to {where}: {exc.strerror or exc}"
    except ValueError as exc:
        return False, f"tls: {exc}"


def check_folder(target: FolderDestination) -> tuple[bool, str]:
    """Whether a folder destination exists (or can be made) and is writable."""
    path = Path(target.path)
    if path.exists() and not path.is_dir():
        return False, f"{path} exists and is not a folder"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        return False, f"{existing} is not writable by the node"
    if existing != path:
        return True, f"{path} does not exist yet; it is created at the first delivery"
    return True, f"{path} is a writable folder"
