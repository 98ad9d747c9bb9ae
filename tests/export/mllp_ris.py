"""A RIS on loopback for the HL7 tests: hl7apy's MLLP server, not our code.

:class:`RIS` runs :class:`hl7apy.mllp.MLLPServer` on 127.0.0.1 and a free
port (or a given one) in a thread. It records every message it receives (the
ER7 text as the server decoded it) and answers with a configurable ACK built
with hl7apy: ``AA``, ``AE``, ``AR``, ``AA`` for another control ID
(``"wrong-id"``), or nothing at all (``"none"``: the connection is held open
until the test ends or ``hold`` seconds pass). A sequence of answers is used
in order, one per message received, the last one for every later message:
``["none", "AA"]`` leaves the first message unanswered and ACKs the rest.
``on_message`` is called with each message as it arrives, before the answer
(a test can look at what the PACS holds at that very moment).
With ``ssl_context`` the server speaks MLLP over TLS (its listening socket is
wrapped, so every accepted connection starts with the TLS handshake).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

ORU_TYPE = "ORU^R01^ORU_R01"


class RIS:
    """State shared by the server's handler threads."""

    def __init__(
        self,
        answer: str | Sequence[str],
        reason: str,
        hold: float,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.answers = [answer] if isinstance(answer, str) else list(answer)
        if not self.answers:
            raise ValueError("the RIS needs at least one answer")
        self.answer = self.answers[0]
        self.reason = reason
        self.hold = hold
        self.on_message = on_message
        self.received: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.server: Any = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def messages(self) -> list[str]:
        with self.lock:
            return list(self.received)

    def answer_for(self, index: int) -> str:
        """The answer to the message received ``index``-th (from 0)."""
        return self.answers[min(index, len(self.answers) - 1)]


class _Handler(AbstractHandler):  # type: ignore[misc]
    def __init__(self, message: str, ris: RIS) -> None:
        super().__init__(message)
        self.ris = ris

    def reply(self) -> str:
        ris = self.ris
        if ris.on_message is not None:
            ris.on_message(self.incoming_message)
        with ris.lock:
            answer = ris.answer_for(len(ris.received))
            ris.received.append(self.incoming_message)
        if answer == "none":
            ris.stopping.wait(ris.hold)
            raise ConnectionAbortedError("the RIS never answers")
        incoming = parse_message(self.incoming_message)
        control_id = incoming.msh.msh_10.to_er7()
        code = "AA" if answer == "wrong-id" else answer
        if answer == "wrong-id":
            control_id = "NOT-" + control_id
        ack = Message("ACK", version="2.5.1")
        ack.msh.msh_3 = "RIS"
        ack.msh.msh_4 = "HOSPITAL"
        ack.msh.msh_5 = incoming.msh.msh_3.to_er7()
        ack.msh.msh_6 = incoming.msh.msh_4.to_er7()
        ack.msh.msh_7 = datetime.now().strftime("%Y%m%d%H%M%S")
        ack.msh.msh_9 = "ACK^R01^ACK"
        ack.msh.msh_10 = "ACK-" + control_id
        ack.msh.msh_11 = "P"
        ack.msh.msh_12 = "2.5.1"
        ack.msa.msa_1 = code
        ack.msa.msa_2 = control_id
        if code != "AA":
            err = ack.add_segment("ERR")
            err.err_3 = "207^Application internal error^HL70357"
            err.err_4 = "E"
            err.err_8.value = ris.reason  # a raw value: hl7apy escapes it
        mllp: str = ack.to_mllp()
        return mllp


@contextmanager
def running_ris(
    answer: str | Sequence[str] = "AA",
    reason: str = "",
    hold: float = 30.0,
    port: int = 0,
    on_message: Callable[[str], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[RIS]:
    """Run the RIS for the ``with`` block on ``port`` (0: a free one).

    ``answer`` is AA, AE, AR, wrong-id or none, or a sequence of them used in
    order (the last one for every later message). ``ssl_context``: a server
    context for MLLP over TLS.
    """
    ris = RIS(answer, reason, hold, on_message)
    server = MLLPServer("127.0.0.1", port, {ORU_TYPE: (_Handler, ris)}, timeout=10)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    ris.server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield ris
    finally:
        ris.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def unescape(text: str) -> str:
    """HL7 unescaping, written here independently of the code under test."""
    out: list[str] = []
    i = 0
    table = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}
    while i < len(text):
        if text[i] == "\\":
            end = text.find("\\", i + 1)
            if end > i and text[i + 1 : end] in table:
                out.append(table[text[i + 1 : end]])
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)
