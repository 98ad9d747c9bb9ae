"""The listener's sockets: what a connection may send before the node reads it.

pynetdicom reads a PDU by taking its 6-byte header and then blocking until the
whole announced length (up to 4 GiB) has arrived; it checks neither the length
against the maximum the node advertised nor how long the read takes, and the
accepted socket has no timeout. A peer that sends ``01 00 FF FF FF FF`` and
then nothing holds an association slot, a thread and a growing buffer for as
long as it keeps the connection open, and a few dozen such peers lock every
real sender out.

Nothing in pynetdicom's API reaches that read, so this module replaces the one
piece that performs it: :class:`GuardedSocket` is pynetdicom's
:class:`~pynetdicom.transport.AssociationSocket` with its ``recv`` and
``ready`` checked against :class:`TransportLimits`, installed on every
accepted connection by :class:`NodeRequestHandler`. It relies on how
pynetdicom's DUL reads a PDU: ``recv(6)`` for the header, then
``recv(length)`` for the body (``DULServiceProvider._read_pdu_data``,
pynetdicom 2.x and 3.x); the tests in ``tests/ingress/test_edge_network.py``
talk raw bytes to a node and fail if that ever changes.

What it enforces, and what a peer gets:

* a PDU type other than 0x01-0x07: A-ABORT (service provider, unrecognized
  PDU), connection closed, before the body is read;
* an announced length above the limit for its type (P-DATA-TF: the maximum
  PDU length the node advertises; every other PDU:
  :data:`MAX_CONTROL_PDU_LENGTH`): A-ABORT (service provider, invalid PDU
  parameter value), connection closed, before the body is read;
* no complete A-ASSOCIATE-RQ within the association deadline of the
  connection opening (silent, or trickling bytes): connection closed;
* no byte for the network timeout in the middle of a PDU: connection closed
  (between PDUs pynetdicom's own idle timer aborts the association).

:class:`NodeAssociationServer` adds the listening side: TCP_NODELAY on every
accepted socket, an optional SO_REUSEPORT, a listen backlog sized for bursts,
and a cap on the connections one address may hold at once (a connection beyond
it is closed as soon as it is accepted). With an :class:`ssl.SSLContext` it
speaks DICOM over TLS; pynetdicom would run the TLS handshake in the thread
that accepts connections, with no timeout, so one peer that connects and sends
nothing would stop every other connection from being accepted: here the
handshake runs in the connection's own thread and must end within the
association deadline, which also covers the A-ASSOCIATE-RQ after it. The
:class:`GuardedSocket` then reads the decrypted stream with the same checks.
:func:`discard_partial_dataset` removes the file pynetdicom's chunked receive
leaves behind when an association ends in the middle of a data set.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

LOGGER = logging.getLogger(__name__)

#: Largest non-P-DATA PDU the node reads (an A-ASSOCIATE-RQ offering every
#: storage class with a dozen transfer syntaxes each is about 200 KiB; DCMTK
#: caps the same PDU at 1 MiB).
MAX_CONTROL_PDU_LENGTH = 1024 * 1024
#: The PDU types of PS3.8 9.3 (A-ASSOCIATE-RQ to A-ABORT).
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
_A_ASSOCIATE_RQ = 0x01
_P_DATA_TF = 0x04
_HEADER = struct.Struct(">BBL")
#: A-ABORT reasons (PS3.8 9.3.8), source 2 (service provider).
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_INVALID_PARAMETER = 0x06
#: How long the node waits to hand a refused peer its A-ABORT.
_ABORT_SEND_TIMEOUT = 1.0


@dataclass(frozen=True)
class TransportLimits:
    """What one connection may send.

    Parameters
    ----------
    max_pdata_length : int
        Largest P-DATA-TF PDU length accepted (the maximum PDU length the node
        advertises).
    association_deadline : float
        Seconds from the connection opening to a complete A-ASSOCIATE-RQ.
    network_timeout : float
        Seconds a PDU may stall between two received bytes once associated.
    max_connections_per_address : int
        Connections one peer address may hold open at once.
    max_control_length : int
        Largest length accepted for every other PDU type.
    """

    max_pdata_length: int
    association_deadline: float
    network_timeout: float
    max_connections_per_address: int
    max_control_length: int = MAX_CONTROL_PDU_LENGTH

    def limit_for(self, pdu_type: int) -> int:
        """The largest length field accepted for a PDU of ``pdu_type``."""
        return self.max_pdata_length if pdu_type == _P_DATA_TF else self.max_control_length


def abort_pdu(reason: int) -> bytes:
    """An encoded A-ABORT PDU from the service provider (source 2)."""
    return _HEADER.pack(0x07, 0, 4) + bytes((0, 0, 0x02, reason))


class GuardedSocket(AssociationSocket):
    """pynetdicom's association socket with the node's limits on every read.

    Not constructed directly: :meth:`adopt` turns the socket pynetdicom made for
    an accepted connection into one (pynetdicom's constructor already queued the
    connection's first state-machine event, which a second construction would
    repeat).
    """

    limits: TransportLimits
    _opened: float
    _expect_body: bool
    _pdu_type: int
    _rq_received: bool
    _refused: bool
    _woken: bool
    _timeout: float | None

    @classmethod
    def adopt(
        cls, plain: AssociationSocket, limits: TransportLimits, opened: float | None = None
    ) -> GuardedSocket:
        """Give an accepted connection's socket the node's limits.

        Parameters
        ----------
        plain : AssociationSocket
            The socket pynetdicom created for the connection, not yet read.
        limits : TransportLimits
            What the connection may send.
        opened : float, optional
            When the connection was accepted (:func:`time.monotonic`), where
            that was before now (a TLS handshake came first); default now.
        """
        plain.__class__ = cls
        guarded = cast(GuardedSocket, plain)
        guarded.limits = limits
        guarded._opened = time.monotonic() if opened is None else opened
        guarded._expect_body = False
        guarded._pdu_type = 0
        guarded._rq_received = False
        guarded._refused = False
        guarded._woken = False
        guarded._timeout = None
        return guarded

    # -- what pynetdicom's DUL calls ---------------------------------------

    @property
    def ready(self) -> bool:
        """Whether data waits to be read; closes a connection past its
        association deadline."""
        if not self._rq_received and self.socket is not None and self._deadline_left() <= 0:
            self._refuse("sent no A-ASSOCIATE-RQ within the association deadline", None)
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        return super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        """Read a PDU header (checked before its body is read) or a PDU body.

        A refused header or a missed deadline closes the connection and returns
        what pynetdicom treats as a closed transport.
        """
        if self.socket is None:
            return bytearray()
        header = not self._expect_body
        self._arm_timeout()
        try:
            data = super().recv(nr_bytes)
        except TimeoutError:
            what = "header" if header else "body"
            if self._rq_received:
                reason = f"stalled for {self.limits.network_timeout:g} s inside a PDU {what}"
            else:
                reason = "did not complete its A-ASSOCIATE-RQ within the association deadline"
            self._refuse(reason, None)
            return bytearray()
        except OSError:
            self._disconnect()  # reset by the peer
            return bytearray()
        if header:
            if len(data) < _HEADER.size:
                # The peer closed the connection (pynetdicom sees that too).
                self._disconnect()
                return data
            pdu_type, _, length = _HEADER.unpack(bytes(data))
            if not self._header_acceptable(pdu_type, length):
                return bytearray()
            self._expect_body = True
            self._pdu_type = pdu_type
        else:
            # pynetdicom reads the whole body in one call
            self._expect_body = False
            if len(data) < nr_bytes:
                # The peer closed the connection inside a PDU.
                self._disconnect()
                return data
            if self._pdu_type == _A_ASSOCIATE_RQ:
                self._rq_received = True
        return data

    # -- checks --------------------------------------------------------------

    def _header_acceptable(self, pdu_type: int, length: int) -> bool:
        if pdu_type not in _KNOWN_PDU_TYPES:
            self._refuse(f"sent an unknown PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
            return False
        limit = self.limits.limit_for(pdu_type)
        if length > limit:
            self._refuse(
                f"announced a PDU (type 0x{pdu_type:02X}) of {length} bytes, "
                f"above the {limit} the node accepts",
                ABORT_INVALID_PARAMETER,
            )
            return False
        return True

    def _deadline_left(self) -> float:
        return self._opened + self.limits.association_deadline - time.monotonic()

    def _arm_timeout(self) -> None:
        """Bound the next read: by the association deadline until the
        A-ASSOCIATE-RQ is in, by the network timeout after."""
        if self._rq_received:
            timeout = self.limits.network_timeout
        else:
            timeout = max(0.001, self._deadline_left())
        if timeout != self._timeout and self.socket is not None:
            self.socket.settimeout(timeout)
            self._timeout = timeout

    def _refuse(self, reason: str, abort_reason: int | None) -> None:
        """Log once, send an A-ABORT when asked, and close the connection."""
        if self._refused:
            return
        self._refused = True
        LOGGER.warning("closed a connection from %s: it %s", self._peer(), reason)
        if self.socket is not None and abort_reason is not None:
            try:
                self.socket.settimeout(_ABORT_SEND_TIMEOUT)
                self.socket.sendall(abort_pdu(abort_reason))
            except OSError:
                pass  # the peer is gone or not reading: closing is enough
        self._disconnect()

    def _disconnect(self) -> None:
        """Close the connection, and wake pynetdicom's acceptor if it still
        waits for the A-ASSOCIATE-RQ.

        The caller makes pynetdicom see a closed transport (an empty read, or
        Evt17 on its event queue); from here on it must not touch the socket.
        """
        raw = self.socket
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already disconnected
            raw.close()
        self.socket = None
        self._is_connected = False
        if not self._rq_received and not self._woken:
            # The acceptor thread blocks (acse_timeout) for an A-ASSOCIATE-RQ
            # that will never come; an empty item is how its own wait ends.
            self._woken = True
            self.assoc.dul.to_user_queue.put(None)

    def _peer(self) -> str:
        try:
            return str(self.assoc.requestor.address)
        except (AttributeError, TypeError):
            return "an unknown address"


def discard_partial_dataset(event: Any) -> None:
    """``evt.EVT_ABORTED`` / ``evt.EVT_RELEASED``: remove the file of a data set
    that stopped half-way.

    pynetdicom's chunked receive creates a file when a C-STORE's command
    arrives and removes it only after the C-STORE handler ran; when the
    association ends first, the file stays, so every aborted transfer would
    leave one behind.
    """
    message = getattr(event.assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    try:
        partial.close()
        os.unlink(partial.name)
    except OSError as exc:
        LOGGER.warning("could not remove a partly received data set: %s", exc.strerror)


class NodeRequestHandler(RequestHandler):
    """pynetdicom's request handler, giving each connection a :class:`GuardedSocket`."""

    server: NodeAssociationServer
    _opened: float

    def handle(self) -> None:
        """pynetdicom's ``handle``, with the association's thread started
        under the server's connection count (see
        :meth:`NodeAssociationServer.verify_request`), after the TLS
        handshake when the listener speaks TLS."""
        host = str(self.client_address[0])
        self._opened = time.monotonic()
        try:
            if isinstance(self.request, ssl.SSLSocket) and not self._handshake(host):
                self.server.started(host, None)
                return
            assoc = self._create_association()
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        except BaseException:
            self.server.started(host, None)
            raise
        self.server.started(host, assoc)

    def _handshake(self, host: str) -> bool:
        """Run the TLS handshake within the association deadline; log and close
        the connection when it fails."""
        request = cast(ssl.SSLSocket, self.request)
        try:
            request.settimeout(self.server.limits.association_deadline)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:
            if isinstance(exc, TimeoutError):
                reason = "did not complete the TLS handshake within the association deadline"
            elif isinstance(exc, ssl.SSLError):
                reason = f"failed the TLS handshake ({exc.reason or exc.strerror!a})"
            else:
                reason = f"closed the connection during the TLS handshake ({exc})"
            LOGGER.warning("closed a connection from %s: it %s", host, reason)
            try:
                request.close()
            except OSError:
                pass  # already gone
            return False
        return True

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        GuardedSocket.adopt(
            cast(AssociationSocket, assoc.dul.socket), self.server.limits, self._opened
        )
        return assoc


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the node's socket settings.

    TCP_NODELAY on every accepted socket; SO_REUSEPORT when several processes
    share the port; a listen backlog of ``request_queue_size``; at most
    ``limits.max_connections_per_address`` connections from one address (one
    more is closed as soon as it is accepted). Subclassed per listener by
    :func:`server_class`, which sets these class attributes.
    """

    reuse_port = False
    request_queue_size = 128
    limits: TransportLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # made before pynetdicom's constructor, which binds and starts listening
        self._cap_lock = threading.Lock()
        self._starting: Counter[str] = Counter()
        self._capped: set[str] = set()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.reuse_port and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection: TCP_NODELAY, and with TLS a wrapped socket whose
        handshake :class:`NodeRequestHandler` runs in the connection's thread."""
        listening = cast(socket.socket, self.socket)
        client, address = listening.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse a connection from an address already holding its share.

        An address holds the associations whose threads run and the connections
        accepted whose association has not started yet (a burst is accepted
        faster than threads start); :meth:`started` moves a connection from
        the second to the first under the same lock.
        """
        host = str(client_address[0])
        with self._cap_lock:
            held = self._starting[host] + sum(
                1 for assoc in self.active_associations if assoc.requestor.address == host
            )
            if held < self.limits.max_connections_per_address:
                self._starting[host] += 1
                self._capped.discard(host)
                return True
            first = host not in self._capped
            self._capped.add(host)
        if first:
            LOGGER.warning(
                "closing new connections from %s: it already holds %d, the most one address may",
                host,
                held,
            )
        return False

    def started(self, host: str, assoc: Any) -> None:
        """Start the association of a connection from ``host`` (``None``: it
        failed before that) and stop counting it as starting."""
        with self._cap_lock:
            try:
                if assoc is not None:
                    assoc.start()
            finally:
                self._starting[host] -= 1
                if self._starting[host] <= 0:
                    del self._starting[host]


def server_class(
    *, reuse_port: bool, backlog: int, limits: TransportLimits
) -> type[NodeAssociationServer]:
    """A :class:`NodeAssociationServer` subclass carrying one listener's settings.

    pynetdicom builds the server from a class (``AE.make_server(server_class=...)``),
    so the settings travel as class attributes.
    """
    return type(
        "NodeAssociationServer",
        (NodeAssociationServer,),
        {"reuse_port": reuse_port, "request_queue_size": backlog, "limits": limits},
    )
