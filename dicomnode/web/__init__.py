"""The web console and REST API: pages, ``/api/v1``, health and metrics."""

from dicomnode.web.app import create_app
from dicomnode.web.context import ConsoleContext
from dicomnode.web.server import ConsoleServer, loopback_only

__all__ = ["ConsoleContext", "ConsoleServer", "create_app", "loopback_only"]
