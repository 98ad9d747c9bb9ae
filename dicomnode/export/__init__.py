"""Delivery to peers: C-STORE SCU (and, later, HL7 over MLLP)."""

from dicomnode.errors import SendError
from dicomnode.export.storescu import (
    OutgoingFile,
    SendReport,
    collect_files,
    send_files,
)

__all__ = ["OutgoingFile", "SendError", "SendReport", "collect_files", "send_files"]
