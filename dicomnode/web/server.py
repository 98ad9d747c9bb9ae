"""The console served by uvicorn on a thread of the node's process."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time

import uvicorn

from dicomnode.errors import StartupError
from dicomnode.web.app import create_app
from dicomnode.web.context import ConsoleContext

__all__ = ["ConsoleServer", "loopback_only"]

LOGGER = logging.getLogger(__name__)


def loopback_only(host: str) -> bool:
    """Whether ``host`` (an IP address) is reachable from this machine only."""
    return ipaddress.ip_address(host).is_loopback


class ConsoleServer:
    """The console and REST API on ``host:port``.

    Parameters
    ----------
    ctx : ConsoleContext
        What the app reads and does.
    host, port : str, int
        Where to listen.

    The socket is bound in :meth:`start`, so a port in use is a
    :class:`OSError` there; requests are served by uvicorn on a thread of
    its own, which :meth:`stop` ends (open connections get a few seconds).
    uvicorn logs no access lines (a search's query could hold an identifier).
    """

    def __init__(self, ctx: ConsoleContext, host: str, port: int) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Refuse a listener beyond loopback without users; bind; serve.

        Raises
        ------
        StartupError
            ``host`` is not loopback and no user exists.
        OSError
            The address cannot be bound.
        """
        if not loopback_only(self.host) and self.ctx.users.count() == 0:
            raise StartupError(
                f"console: refusing to listen on {self.host}, beyond loopback, without a user: "
                "add one with `dicomnode users add NAME --role admin`, or set console.host: "
                "127.0.0.1"
            )
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(64)
        sock.set_inheritable(False)
        self._socket = sock
        config = uvicorn.Config(
            create_app(self.ctx),
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name="console",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise StartupError(f"console: did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        LOGGER.info("console listening on http://%s:%d/", self.host, self.port)

    def alive(self) -> bool:
        """Whether the serving thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            if self._thread.is_alive():
                LOGGER.error("console: the serving thread did not stop")
        if self._socket is not None:
            self._socket.close()
        self._server = None
        self._thread = None
        self._socket = None
