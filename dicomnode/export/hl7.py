"""HL7 v2 over MLLP: send a message, read its ACK, decide what the ACK means.

The messages themselves are built when the results are written
(:mod:`dicomnode.results.oru`) and kept in the outbox; this module only
transports them. :func:`send_mllp` delivers one message and reads the ACK
under a hard deadline; :func:`classify` decides whether the ACK means
delivered, a permanent failure or a retry; :func:`deliver` does both and
checks the ACK against the message's own MSH-10. :func:`unescape` decodes
the text of what arrives (MSA-2, MSA-3, ERR).
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass

from dicomnode.errors import HL7ConnectionError, HL7Error, HL7NackError, HL7TimeoutError

__all__ = [
    "AckResult",
    "classify",
    "deliver",
    "message_control_id",
    "parse_ack",
    "send_mllp",
    "unescape",
]

LOGGER = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

_UNESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}
_SEQUENCE = re.compile(r"\\(X[0-9A-Fa-f]*|\.br|[FSTRE]|[HN])\\")


def unescape(text: str) -> str:
    """Undo HL7 escaping (the default encoding characters) in one value.

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` become their delimiter, ``\\Xhh..\\`` its
    bytes (UTF-8), ``\\.br\\`` a line break; highlighting (``\\H\\``, ``\\N\\``)
    is dropped. A lone backslash is kept (tolerant in).
    """

    def replace(match: re.Match[str]) -> str:
        body = match.group(1)
        if body in _UNESCAPES:
            return _UNESCAPES[body]
        if body == ".br":
            return "\n"
        if body.startswith("X"):
            try:
                return bytes.fromhex(body[1:]).decode("utf-8", errors="replace")
            except ValueError:
                return match.group(0)
        return ""

    return _SEQUENCE.sub(replace, text)


@dataclass(frozen=True)
class AckResult:
    """What the receiver answered.

    Attributes
    ----------
    code : str
        MSA-1: ``AA``, ``AE``, ``AR`` (original mode) or ``CA``, ``CE``, ``CR``.
    control_id : str
        MSA-2: the control ID the receiver acknowledged.
    text : str
        MSA-3, else the ERR segment's user message or error text, unescaped.
    raw : str
        The ACK as received (for the delivery record; never log it at INFO).
    """

    code: str
    control_id: str
    text: str
    raw: str = ""


def message_control_id(message: str) -> str:
    """MSH-10 of an ER7 message (``""`` when it has none)."""
    first = message.split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3])
    # fields[0] is "MSH", fields[1] the encoding characters (MSH-2): MSH-n is fields[n - 1]
    return unescape(fields[9]) if len(fields) > 9 else ""


def parse_ack(data: str) -> AckResult:
    """Read MSA (and ERR) from an ACK; tolerant of ``\\n`` and field separators.

    Raises
    ------
    HL7Error
        (retryable) If the answer has no MSA segment.
    """
    segments = [s for s in re.split(r"\r\n|\r|\n", data) if s]
    separator = "|"
    if segments and segments[0].startswith("MSH") and len(segments[0]) > 3:
        separator = segments[0][3]
    msa: list[str] | None = None
    err_text = ""
    for segment in segments:
        fields = segment.split(separator)
        if fields[0] == "MSA" and msa is None:
            msa = fields
        elif fields[0] == "ERR" and not err_text:
            # 2.5+: ERR-8 user message, ERR-3 HL7 error code (text in .2); 2.4: ERR-1
            for index in (8, 3, 1):
                if len(fields) > index and fields[index]:
                    components = fields[index].split("^")
                    err_text = components[1] if len(components) > 1 else components[0]
                    if err_text:
                        break
    if msa is None:
        raise HL7Error("the answer holds no MSA segment", permanent=False)
    code = msa[1].strip().upper() if len(msa) > 1 else ""
    control = unescape(msa[2]) if len(msa) > 2 else ""
    text = unescape(msa[3]) if len(msa) > 3 and msa[3] else unescape(err_text)
    return AckResult(code=code, control_id=control, text=text, raw=data)


def send_mllp(
    message: str,
    host: str,
    port: int,
    *,
    timeout: float,
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> AckResult:
    """Send one message over MLLP and wait for its ACK.

    The whole exchange (connect, send, read the ACK) must end within
    ``timeout`` seconds: every socket wait is recomputed from one monotonic
    deadline, so a peer trickling bytes cannot extend it. The function has
    no state: a retry re-sends the very same ``message`` (same MSH-10).

    Parameters
    ----------
    message : str
        The ER7 message (``\\r`` between segments); sent as UTF-8.
    host, port
        The receiver.
    timeout : float
        Seconds, total (TLS handshake included).
    tls : tuple of (ssl.SSLContext, str), optional
        MLLP over TLS: the client context and the name the receiver's
        certificate must carry; ``None`` sends over plain TCP.

    Returns
    -------
    AckResult
        The ACK as read; :func:`classify` says what it means.

    Raises
    ------
    HL7TimeoutError
        No complete ACK before the deadline.
    HL7ConnectionError
        Connection refused or reset, or closed without an ACK.
    HL7Error
        (retryable) The answer is not an ACK (no MSA).
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    deadline = time.monotonic() + timeout
    frame = START_BLOCK + message.encode("utf-8") + END_BLOCK

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HL7TimeoutError(f"no ACK from {host}:{port} within {timeout:g} s")
        return left

    try:
        with socket.create_connection((host, port), timeout=remaining()) as plain:
            plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            plain.settimeout(remaining())
            wrapped = plain if tls is None else tls[0].wrap_socket(plain, server_hostname=tls[1])
            with wrapped as sock:
                sock.sendall(frame)
                buffer = b""
                while True:
                    sock.settimeout(remaining())
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise HL7ConnectionError(
                            f"{host}:{port} closed the connection without an ACK"
                        )
                    buffer += chunk
                    start = buffer.find(START_BLOCK)
                    if start >= 0:
                        end = buffer.find(END_BLOCK, start)
                        if end >= 0:
                            body = buffer[start + 1 : end].decode("utf-8", errors="replace")
                            break
    except HL7Error:
        raise
    except TimeoutError as exc:  # socket.timeout is TimeoutError
        raise HL7TimeoutError(f"no ACK from {host}:{port} within {timeout:g} s") from exc
    except ssl.SSLError as exc:
        raise HL7ConnectionError(f"cannot deliver to {host}:{port}: TLS failed ({exc})") from exc
    except OSError as exc:
        raise HL7ConnectionError(f"cannot deliver to {host}:{port}: {exc}") from exc
    return parse_ack(body)


def classify(ack: AckResult, expected_control_id: str) -> AckResult:
    """Decide what an ACK means; return it when the message was delivered.

    Raises
    ------
    HL7NackError
        ``permanent=True`` for AE/CE (the reason from MSA-3/ERR);
        ``permanent=False`` for AR/CR, an unknown code, or an ACK whose MSA-2
        is not ``expected_control_id``.
    """
    fields = {"code": ack.code, "control_id": ack.control_id, "reason": ack.text}
    if ack.control_id != expected_control_id:
        raise HL7NackError(
            f"the ACK acknowledges control ID {ack.control_id!r}, not {expected_control_id!r}",
            permanent=False,
            **fields,
        )
    if ack.code in ("AA", "CA"):
        return ack
    if ack.code in ("AE", "CE"):
        raise HL7NackError(
            f"the receiver refused the message ({ack.code}): {ack.text or 'no reason given'}",
            permanent=True,
            **fields,
        )
    raise HL7NackError(
        f"the receiver rejected the message ({ack.code or 'no code'}): "
        f"{ack.text or 'no reason given'}",
        permanent=False,
        **fields,
    )


def deliver(
    message: str,
    host: str,
    port: int,
    *,
    timeout: float,
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> AckResult:
    """Send ``message`` and check its ACK against its own MSH-10.

    Returns the ACK when delivered; raises like :func:`send_mllp` and
    :func:`classify` otherwise (``exc.permanent`` says whether to retry).
    ``tls`` is as for :func:`send_mllp`.
    """
    expected = message_control_id(message)
    if not expected:
        raise HL7Error("the message has no MSH-10 control ID", permanent=True)
    ack = classify(send_mllp(message, host, port, timeout=timeout, tls=tls), expected)
    LOGGER.debug("HL7 message %s acknowledged by %s:%d", expected, host, port)
    return ack
