"""A small HTTP listener for ``/metrics``, ``/healthz`` and ``/readyz``.

``dicomnode serve`` starts it when ``metrics.enabled`` is true, so a node is
scraped and probed without the web console. It serves GET and HEAD of those
three paths only (404 otherwise), answers without a login (keep it on
loopback or a management network; nothing it serves names a patient), and
logs nothing per request.

The same three answers are what a web app mounts: :func:`metrics_answer`,
:func:`health_answer`.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dicomnode.health import Health, liveness

__all__ = ["Answer", "OpsServer", "health_answer", "metrics_answer"]

LOGGER = logging.getLogger(__name__)

#: An HTTP answer: status, content type, body.
Answer = tuple[int, str, bytes]
JSON = "application/json"


def metrics_answer(
    exposition: Callable[[str | None], tuple[bytes, str]], accept: str | None
) -> Answer:
    """``/metrics``: the exposition in the format ``accept`` asks for.

    Parameters
    ----------
    exposition : callable
        ``accept`` to (body, content type), e.g. :meth:`dicomnode.metrics.NodeMetrics.exposition`.
    accept : str, optional
        The request's ``Accept`` header.
    """
    body, content_type = exposition(accept)
    return 200, content_type, body


def health_answer(health: Health) -> Answer:
    """``/healthz`` or ``/readyz``: 200 or 503 with the report as JSON."""
    return health.http_status, JSON, health.body()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self) -> Answer | None:
        path = self.path.split("?", 1)[0]
        ops = self.server.ops
        if path == "/metrics":
            return metrics_answer(ops.exposition, self.headers.get("Accept"))
        if path == "/healthz":
            return health_answer(ops.live())
        if path == "/readyz":
            return health_answer(ops.ready())
        return None

    def _serve(self, with_body: bool) -> None:
        try:
            answer = self._answer()
        except Exception:
            LOGGER.exception("%s failed", self.path.split("?", 1)[0])
            answer = (500, "text/plain; charset=utf-8", b"internal error\n")
        if answer is None:
            answer = (404, "text/plain; charset=utf-8", b"not found\n")
        status, content_type, body = answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._serve(True)

    def do_HEAD(self) -> None:
        self._serve(False)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], ops: OpsServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.ops = ops
        super().__init__(address, _Handler)


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port``.

    Parameters
    ----------
    host, port : str, int
        Where to listen (port 0: any free port, see :attr:`port`).
    exposition : callable
        ``Accept`` header to (body, content type).
    ready : callable
        The readiness report, made per request.
    live : callable
        The liveness report; default :func:`dicomnode.health.liveness`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        exposition: Callable[[str | None], tuple[bytes, str]],
        ready: Callable[[], Health],
        live: Callable[[], Health] | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.exposition = exposition
        self.ready = ready
        self.live = live or liveness
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port as bound (the requested one before :meth:`start`)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a background thread.

        Raises
        ------
        OSError
            The address cannot be bound.
        """
        self._server = _Server((self.host, self.requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dicomnode-metrics", daemon=True
        )
        self._thread.start()
        LOGGER.info(
            "metrics and health on http://%s:%d/ (/metrics, /healthz, /readyz)",
            self.host,
            self.port,
        )

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
