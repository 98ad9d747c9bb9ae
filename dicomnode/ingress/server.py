"""The DICOM listener: a pynetdicom AE with the node's policy and sockets."""

from __future__ import annotations

import errno
import logging
import os
import queue
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt

from dicomnode.config import IngressConfig, NodeConfig
from dicomnode.errors import StartupError
from dicomnode.ingress.contexts import supported_contexts
from dicomnode.ingress.handler import OUT_OF_RESOURCES, SUCCESS, StoreHandler
from dicomnode.ingress.policy import SenderPolicy
from dicomnode.ingress.transport import (
    MAX_CONTROL_PDU_LENGTH,
    NodeRequestHandler,
    TransportLimits,
    discard_partial_dataset,
    server_class,
)
from dicomnode.logs import escape
from dicomnode.metrics import IngressMetrics

LOGGER = logging.getLogger(__name__)

#: A DICOM file's 128-byte preamble and "DICM".
_PREAMBLE_AND_PREFIX = 132
#: (0002,0000) UL, explicit VR: tag, VR, length, value.
_GROUP_LENGTH_ELEMENT = 12


def dataset_size(path: Path) -> int:
    """The length of the dataset in a file pynetdicom received: the file less
    its preamble, prefix and File Meta Information (whose group length is the
    file's first element)."""
    with path.open("rb") as file:
        file.seek(_PREAMBLE_AND_PREFIX)
        head = file.read(_GROUP_LENGTH_ELEMENT)
        file.seek(0, os.SEEK_END)
        total = file.tell()
    if len(head) < _GROUP_LENGTH_ELEMENT:
        return total
    meta_length = int(struct.unpack("<L", head[8:12])[0])
    return max(0, total - _PREAMBLE_AND_PREFIX - _GROUP_LENGTH_ELEMENT - meta_length)


def transport_limits(ingress: IngressConfig) -> TransportLimits:
    """What one connection may send, from the ``ingress`` section.

    A P-DATA-TF PDU may be as long as the maximum the node advertises; with
    ``max_pdu_size: 0`` (no advertised limit) as long as the largest dataset
    plus its command.
    """
    max_pdata = ingress.max_pdu_size or ingress.max_dataset_size + MAX_CONTROL_PDU_LENGTH
    return TransportLimits(
        max_pdata_length=max_pdata,
        association_deadline=ingress.association_deadline,
        network_timeout=ingress.network_timeout,
        max_connections_per_address=ingress.max_connections_per_address,
    )


def listeners(node: NodeConfig, ingress: IngressConfig) -> list[tuple[int, ssl.SSLContext | None]]:
    """The ports to listen on, each with its TLS context (``None``: plain TCP).

    Without ``ingress.tls``: ``node.port`` in plain TCP. With it and no
    ``tls.port``: ``node.port`` in TLS only. With ``tls.port``: ``node.port``
    in plain TCP and ``tls.port`` in TLS.

    Raises
    ------
    StartupError
        The TLS files cannot be loaded (any more).
    """
    tls = ingress.tls
    if tls is None:
        return [(node.port, None)]
    try:
        context = tls.context()
    except ValueError as exc:
        raise StartupError(f"ingress.tls: {exc}") from exc
    if tls.port is None:
        return [(node.port, context)]
    return [(node.port, None), (tls.port, context)]


def in_use_hint(exc: OSError) -> str:
    """What to add to the message of a failed bind when the port is taken.

    Parameters
    ----------
    exc : OSError
        The error of the bind.

    Returns
    -------
    str
        A hint naming how to find the program on the port, or ``""`` when
        the error is not EADDRINUSE.
    """
    if exc.errno != errno.EADDRINUSE:
        return ""
    return (
        " (another program listens there; `ss -ltnp` names it. Receiving processes of an "
        "earlier node on this data directory would have been stopped already)"
    )


def _abort_from_the_dul(assoc: Any) -> None:
    """Abort the association from its state machine's own thread: an A-ABORT
    (source: service provider) goes out and the association's reactor is told
    (A-P-ABORT), in that order.

    Not ``assoc.abort()``: called from the state machine's thread, that marks
    the association ended before the A-ABORT is sent, and an acceptor thread
    that has not yet started its reactor then closes the connection at once:
    the sender sees it closed without a word.
    """
    assoc.dul.event_queue.put("Evt19")  # as for a PDU that cannot be decoded


def _refusal(assoc: Any, context_id: int | None, primitive: Any) -> str | None:
    """Why a decoded DIMSE message must not reach pynetdicom's services (or
    ``None``): a request whose command set lacks an element needed to answer
    it, a response to a request the node never sent, or a request whose
    Affected SOP Class UID is not the abstract syntax of the presentation
    context it came on (PS3.7 9.1.1.1). pynetdicom would drop the first two
    without an answer (the sender waits for a status that never comes) and
    hand the third to the service of the class it names (a C-STORE-RQ naming
    Verification on a CT context would get the C-ECHO handler's Success)."""
    if primitive.is_valid_request:
        negotiated = {
            str(cx.abstract_syntax) for cx in assoc.accepted_contexts if cx.context_id == context_id
        }
        named = str(getattr(primitive, "AffectedSOPClassUID", None) or "")
        if named and named not in negotiated:
            return (
                f"a {primitive.msg_type} request for SOP class {escape(named, 64)} on a "
                f"presentation context for {', '.join(sorted(negotiated)) or 'nothing'}"
            )
        return None
    missing = [name for name in primitive.REQUEST_KEYWORDS if getattr(primitive, name) is None]
    if missing:
        return f"a {primitive.msg_type} message without {', '.join(missing)}"
    return f"a {primitive.msg_type} message that answers no request"


class _CheckedMessages(queue.Queue):  # type: ignore[type-arg]
    """The queue of decoded DIMSE messages between pynetdicom's state machine
    and the association's reactor, refusing what :func:`_refusal` names: the
    message is dropped and the association aborted, before any service sees
    it."""

    def __init__(self, assoc: Any) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, primitive = item
        if primitive is None:  # pynetdicom's word to the reactor that the association ended
            super().put(item, block, timeout)
            return
        reason = _refusal(self._assoc, context_id, primitive)
        if reason is None:
            super().put(item, block, timeout)
            return
        LOGGER.warning(
            "aborted the association from %s: %s",
            escape(str(self._assoc.requestor.ae_title).strip()),
            reason,
        )
        _abort_from_the_dul(self._assoc)


def _guard_dimse(assoc: Any) -> None:
    """Abort the association on a DIMSE message pynetdicom cannot decode or
    would mis-serve (see :class:`_CheckedMessages`).

    pynetdicom decodes DIMSE messages in the thread that runs the association's
    state machine; a command set without a Command Field, with one it does not
    know, or without a Command Data Set Type raises there, and the exception
    ends that thread: the sender's connection is dropped without an A-ABORT and
    a traceback is printed outside the node's log. Caught here instead: one
    WARNING line, and an A-ABORT (source: service provider).
    """
    dimse = assoc.dimse
    dimse.msg_queue = _CheckedMessages(assoc)
    receive = dimse.receive_primitive

    def receive_or_abort(primitive: Any) -> None:
        try:
            receive(primitive)
        except Exception as exc:  # noqa: BLE001 - whatever the peer's bytes cause
            dimse.message = None
            LOGGER.warning(
                "aborted the association from %s: a command set pynetdicom cannot decode (%s)",
                escape(str(assoc.requestor.ae_title).strip()),
                escape(f"{type(exc).__name__}: {exc}", 200),
            )
            _abort_from_the_dul(assoc)

    dimse.receive_primitive = receive_or_abort


class IngressServer:
    """C-ECHO and C-STORE SCP, on one port or two (plain TCP and TLS).

    Parameters
    ----------
    node : NodeConfig
        AE title, bind address, port.
    ingress : IngressConfig
        Allow-list, PDU and dataset size, deadlines, connection caps, TLS.
    handler : StoreHandler
        Saves and records each instance.
    reuse_port : bool
        Set SO_REUSEPORT so several processes can share the port.
    metrics : IngressMetrics, optional
        Counts instances, bytes, C-STORE statuses and associations.

    Raises
    ------
    StartupError
        The TLS certificate, key or CA file cannot be loaded.
    """

    def __init__(
        self,
        node: NodeConfig,
        ingress: IngressConfig,
        handler: StoreHandler,
        *,
        reuse_port: bool = False,
        metrics: IngressMetrics | None = None,
    ) -> None:
        self.node = node
        self.metrics = metrics
        self.config = ingress
        self.handler = handler
        self.policy = SenderPolicy.from_config(ingress, node.ae_title)
        self.reuse_port = reuse_port
        self._servers: list[Any] = []
        self._listeners = listeners(node, ingress)
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

        # pynetdicom's own handlers of received DIMSE messages only log them
        # (at DEBUG), and one raises on a command set lacking an element, which
        # puts a traceback in the log before the node's check aborts it
        _config.LOG_HANDLER_LEVEL = "none"
        ae = AE(ae_title=node.ae_title)
        self.contexts = supported_contexts()
        ae.supported_contexts = self.contexts
        ae.maximum_pdu_size = ingress.max_pdu_size
        ae.maximum_associations = ingress.max_associations
        ae.acse_timeout = ingress.acse_timeout
        ae.dimse_timeout = ingress.dimse_timeout
        ae.network_timeout = ingress.network_timeout
        ae.require_called_aet = False
        self.ae = ae
        self.limits = transport_limits(ingress)
        #: the associations whose connection is open, for their poll interval
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port of ``node.port``'s listener as bound."""
        if not self._servers:
            return self.node.port
        return int(self._servers[0].server_address[1])

    @property
    def _server(self) -> Any:
        """The listener on ``node.port`` (``None`` when not started)."""
        return self._servers[0] if self._servers else None

    @property
    def tls_port(self) -> int | None:
        """The port that speaks TLS, or ``None`` without TLS."""
        for index, (port, context) in enumerate(self._listeners):
            if context is not None:
                if index < len(self._servers):
                    return int(self._servers[index].server_address[1])
                return port
        return None

    def _on_requested(self, event: Any) -> None:
        """``evt.EVT_REQUESTED``: reject senders not on the allow-list
        (reason 3, calling AE title not recognized), then associations to an
        AE title the node does not serve (reason 7, called AE title not
        recognized); both rejected-permanent, by the service user."""
        primitive = event.assoc.requestor.primitive
        calling_ae = str(primitive.calling_ae_title).strip()
        called_ae = str(primitive.called_ae_title).strip()
        host = str(event.assoc.requestor.address)
        if not self.policy.accepts(calling_ae, host):
            LOGGER.warning(
                "rejected association from AE %s at %s: not allowed", escape(calling_ae), host
            )
            # counted before the reject goes out: once the sender has its
            # answer, whoever reads the metrics must find it counted
            if self.metrics is not None:
                self.metrics.refuse("calling_ae_not_allowed")
            self.handler.association_refused(calling_ae, called_ae, host, "calling AE not allowed")
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            event.assoc.kill()
        elif not self.policy.serves(called_ae):
            LOGGER.warning(
                "rejected association from AE %s at %s: called AE title %s is not served here",
                escape(calling_ae),
                host,
                escape(called_ae),
            )
            if self.metrics is not None:
                self.metrics.refuse("called_ae_not_served")
            self.handler.association_refused(
                calling_ae, called_ae, host, "called AE title not served"
            )
            event.assoc.acse.send_reject(0x01, 0x01, 0x07)
            event.assoc.kill()

    def _on_open(self, event: Any) -> None:
        """``evt.EVT_CONN_OPEN``: set the associations' network poll interval;
        guard the DIMSE messages."""
        with self._open_lock:
            self._open.add(event.assoc)
            self._pace()
        _guard_dimse(event.assoc)

    def _pace(self) -> None:
        """Give every open association the poll interval for their number.

        pynetdicom's network loop (one thread per association) sleeps this long
        whenever it finds nothing to do. One association is fastest with a
        short sleep (its default, 1 ms, costs a quarter of the one-association
        receive rate, since every C-STORE waits on it more than once); but each
        wake-up takes the GIL, and many associations waking that often spend
        the CPU they share on waking up. So the sleep is ``poll_interval_ms``
        times the number of open associations (at most 20 ms): together they
        wake as often as one does.
        """
        delay = min(self.config.poll_interval_ms * max(1, len(self._open)), 20.0) / 1000.0
        for assoc in self._open:
            assoc.dul._run_loop_delay = delay

    def _on_c_store(self, event: Any) -> int:
        """``evt.EVT_C_STORE``: refuse a dataset above ``max_dataset_size``,
        hand the rest to the store handler; count the answer."""
        size = dataset_size(Path(event.dataset_path))
        status = self._store(event, size)
        if self.metrics is not None:
            self.metrics.responded(status)
            if status == SUCCESS:
                calling_ae = escape(str(event.assoc.requestor.ae_title).strip())
                self.metrics.stored(calling_ae, size)
        return status

    def _store(self, event: Any, size: int) -> int:
        if size > self.config.max_dataset_size:
            LOGGER.warning(
                "refused a %d-byte dataset from %s: above max_dataset_size (%d bytes)",
                size,
                escape(str(event.assoc.requestor.ae_title).strip()),
                self.config.max_dataset_size,
            )
            return OUT_OF_RESOURCES
        return self.handler.on_c_store(event)

    def _on_established(self, event: Any) -> None:
        if self.metrics is not None:
            self.metrics.opened(id(event.assoc))
        self.handler.association_accepted(event.assoc)
        LOGGER.info(
            "association from %s at %s established",
            escape(str(event.assoc.requestor.ae_title).strip()),
            event.assoc.requestor.address,
        )

    def _on_ended(self, event: Any) -> None:
        """``evt.EVT_RELEASED`` / ``evt.EVT_ABORTED``: drop a dataset half
        received, count the association closed."""
        discard_partial_dataset(event)
        self.handler.association_ended(event.assoc)
        if self.metrics is not None:
            self.metrics.closed(id(event.assoc))

    def _on_closed(self, event: Any) -> None:
        """``evt.EVT_CONN_CLOSE``: the connection ended, however it ended (a
        peer that drops the connection sends neither A-RELEASE nor A-ABORT)."""
        with self._open_lock:
            self._open.discard(event.assoc)
            self._pace()
        self.handler.association_ended(event.assoc)
        if self.metrics is not None:
            self.metrics.closed(id(event.assoc))

    def alive(self) -> bool:
        """Whether every listener's serving thread runs (``False`` before start)."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        """Bind and serve in a background thread."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_ECHO, self.handler.on_c_echo),
            (evt.EVT_C_STORE, self._on_c_store),
        ]
        # A received dataset goes to a file as it arrives, not into memory
        # (pynetdicom has only this process-wide switch; the node's C-STORE
        # handler reads ``event.dataset_path``).
        _config.STORE_RECV_CHUNKED_DATASET = True
        for port, context in self._listeners:
            try:
                server = self.ae.make_server(
                    (self.node.bind, port),
                    contexts=self.contexts,  # ours, cheap to copy per association
                    evt_handlers=handlers,
                    ssl_context=context,
                    server_class=server_class(
                        reuse_port=self.reuse_port,
                        backlog=self.config.listen_backlog,
                        limits=self.limits,
                    ),
                    request_handler=NodeRequestHandler,
                )
            except OSError as exc:
                self._close_all()
                raise StartupError(
                    f"cannot listen on {self.node.bind}:{port}: {exc.strerror or exc}"
                    f"{in_use_hint(exc)}"
                ) from exc
            thread = threading.Thread(
                target=server.serve_forever, name=f"dicomnode-ingress-{port}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            self.ae._servers.append(server)
            self._servers.append(server)
            LOGGER.info(
                "listening as %s on %s:%d%s",
                self.node.ae_title,
                self.node.bind,
                int(server.server_address[1]),
                " (DICOM over TLS)" if context is not None else "",
            )

    def _close_all(self) -> None:
        """Stop and close the listeners started so far (a later one failed)."""
        for server in self._servers:
            server.shutdown()  # pynetdicom's: also closes the socket
        self._servers = []

    def active_associations(self) -> int:
        """How many associations are open right now."""
        return sum(len(server.active_associations) for server in self._servers)

    def stop(self, grace_seconds: float) -> None:
        """Stop accepting, let in-flight associations finish (up to
        ``grace_seconds``), then abort what is left."""
        servers = self._servers
        if not servers:
            return
        for server in servers:
            server.shutdown()
        LOGGER.info("stopped accepting associations")
        deadline = time.monotonic() + grace_seconds
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [assoc for server in servers for assoc in server.active_associations]
        for assoc in left:
            assoc.abort()
        if left:
            LOGGER.warning("aborted %d association(s) still open after the grace period", len(left))
        self._servers = []
        self._threads = []
