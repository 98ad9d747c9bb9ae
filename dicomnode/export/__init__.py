"""Delivery to peers, transports only: C-STORE SCU, MLLP client, folder."""

from dicomnode.errors import SendError
from dicomnode.export.storescu import (
    OutgoingFile,
    SendReport,
    collect_files,
    send_files,
)

__all__ = ["OutgoingFile", "SendError", "SendReport", "collect_files", "send_files"]
