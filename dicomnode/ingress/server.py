"""The DICOM listener: a pynetdicom AE with the node's policy and sockets."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import IngressConfig, NodeConfig
from dicomnode.ingress.contexts import supported_contexts
from dicomnode.ingress.handler import StoreHandler
from dicomnode.ingress.policy import SenderPolicy
from dicomnode.logs import escape

LOGGER = logging.getLogger(__name__)


class _NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on every accepted socket
    and, when several processes listen on one port, SO_REUSEPORT."""

    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def _reuse_port_server(reuse: bool) -> type[_NodeAssociationServer]:
    return type("NodeAssociationServer", (_NodeAssociationServer,), {"reuse_port": reuse})


def _guard_dimse_decoding(assoc: Any) -> None:
    """Abort the association when pynetdicom cannot decode a command set.

    pynetdicom decodes DIMSE messages in the thread that runs the association's
    state machine; a command set without a Command Field, with one it does not
    know, or without a Command Data Set Type raises there, and the exception
    ends that thread: the sender's connection is dropped without an A-ABORT and
    a traceback is printed outside the node's log. Caught here instead: one
    WARNING line, and an A-ABORT (source: service provider).
    """
    dimse = assoc.dimse
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
            assoc.acse.send_abort(0x02)

    dimse.receive_primitive = receive_or_abort


class IngressServer:
    """C-ECHO and C-STORE SCP.

    Parameters
    ----------
    node : NodeConfig
        AE title, bind address, port.
    ingress : IngressConfig
        Allow-list, PDU size, timeouts.
    handler : StoreHandler
        Saves and records each instance.
    reuse_port : bool
        Set SO_REUSEPORT so several processes can share the port.
    """

    def __init__(
        self,
        node: NodeConfig,
        ingress: IngressConfig,
        handler: StoreHandler,
        *,
        reuse_port: bool = False,
    ) -> None:
        self.node = node
        self.config = ingress
        self.handler = handler
        self.policy = SenderPolicy.from_config(ingress, node.ae_title)
        self.reuse_port = reuse_port
        self._server: Any = None
        self._stopped = threading.Event()

        # pynetdicom's own handlers of received DIMSE messages only log them
        # (at DEBUG), and one that raises on a command set lacking an element
        # keeps every later handler, the node's _on_dimse_recv, from running
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

    @property
    def port(self) -> int:
        """The port actually bound (useful when the config says 0)."""
        if self._server is None:
            return self.node.port
        return int(self._server.server_address[1])

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
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            event.assoc.kill()
        elif not self.policy.serves(called_ae):
            LOGGER.warning(
                "rejected association from AE %s at %s: called AE title %s is not served here",
                escape(calling_ae),
                host,
                escape(called_ae),
            )
            event.assoc.acse.send_reject(0x01, 0x01, 0x07)
            event.assoc.kill()

    def _on_open(self, event: Any) -> None:
        """``evt.EVT_CONN_OPEN``: set the association's network poll interval.

        pynetdicom's network loop sleeps this long whenever it finds nothing to
        do; its default (1 ms) costs a quarter of the node's one-association
        receive rate, since every C-STORE waits on it more than once.
        """
        event.assoc.dul._run_loop_delay = self.config.poll_interval_ms / 1000.0
        _guard_dimse_decoding(event.assoc)

    def _on_dimse_recv(self, event: Any) -> None:
        """``evt.EVT_DIMSE_RECV``: abort the association on a message pynetdicom
        would drop without an answer: a request whose command set lacks an
        element needed to answer it (Message ID, Affected SOP Instance UID),
        or a response to a request the node never sent. Dropped, the sender
        would wait for a status that never comes, and the association would
        hold one of the node's slots until it timed out. Also on a request
        whose Affected SOP Class UID is not the abstract syntax of the
        presentation context it came on (PS3.7 9.1.1.1), which pynetdicom
        would hand to the service of the class it names."""
        try:
            primitive = event.message.message_to_primitive()
        except Exception:  # noqa: BLE001 - pynetdicom itself aborts on these
            return
        calling_ae = escape(str(event.assoc.requestor.ae_title).strip())
        if primitive.is_valid_request:
            # pynetdicom picks the service by the command's SOP Class, not by
            # the presentation context: a C-STORE-RQ naming Verification on a
            # CT context would be answered by the C-ECHO handler, Success
            context_id = event.message.context_id
            negotiated = {
                str(cx.abstract_syntax)
                for cx in event.assoc.accepted_contexts
                if cx.context_id == context_id
            }
            named = str(getattr(primitive, "AffectedSOPClassUID", None) or "")
            if named and named not in negotiated:
                LOGGER.warning(
                    "aborted the association from %s: a %s request for SOP class %s on a "
                    "presentation context for %s",
                    calling_ae,
                    primitive.msg_type,
                    escape(named, 64),
                    ", ".join(sorted(negotiated)) or "nothing",
                )
                event.assoc.abort(block=False)
            return
        missing = [name for name in primitive.REQUEST_KEYWORDS if getattr(primitive, name) is None]
        LOGGER.warning(
            "aborted the association from %s: a %s message %s",
            calling_ae,
            primitive.msg_type,
            f"without {', '.join(missing)}" if missing else "that answers no request",
        )
        event.assoc.abort(block=False)

    def _on_established(self, event: Any) -> None:
        LOGGER.info(
            "association from %s at %s established",
            str(event.assoc.requestor.ae_title).strip(),
            event.assoc.requestor.address,
        )

    def start(self) -> None:
        """Bind and serve in a background thread."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_DIMSE_RECV, self._on_dimse_recv),
            (evt.EVT_C_ECHO, self.handler.on_c_echo),
            (evt.EVT_C_STORE, self.handler.on_c_store),
        ]
        server = self.ae.make_server(
            (self.node.bind, self.node.port),
            contexts=self.contexts,  # ours, cheap to copy per association
            evt_handlers=handlers,
            server_class=_reuse_port_server(self.reuse_port),
        )
        thread = threading.Thread(
            target=server.serve_forever, name="dicomnode-ingress", daemon=True
        )
        thread.start()
        self.ae._servers.append(server)
        self._server = server
        LOGGER.info("listening as %s on %s:%d", self.node.ae_title, self.node.bind, self.port)

    def active_associations(self) -> int:
        """How many associations are open right now."""
        if self._server is None:
            return 0
        return len(self._server.active_associations)

    def stop(self, grace_seconds: float) -> None:
        """Stop accepting, let in-flight associations finish (up to
        ``grace_seconds``), then abort what is left."""
        server = self._server
        if server is None:
            return
        server.shutdown()
        LOGGER.info("stopped accepting associations")
        deadline = time.monotonic() + grace_seconds
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        left = list(server.active_associations)
        for assoc in left:
            assoc.abort()
        if left:
            LOGGER.warning("aborted %d association(s) still open after the grace period", len(left))
        self._server = None
