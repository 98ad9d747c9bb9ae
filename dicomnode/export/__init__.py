"""Delivery to peers, transports only: C-STORE SCU, MLLP client, folder."""

from dicomnode.errors import SendError
from dicomnode.export.storescu import (
    FailureKind,
    OutgoingFile,
    SendFailure,
    SendReport,
    StatusCategory,
    collect_files,
    send_files,
    status_category,
)

__all__ = [
    "FailureKind",
    "OutgoingFile",
    "SendError",
    "SendFailure",
    "SendReport",
    "StatusCategory",
    "collect_files",
    "send_files",
    "status_category",
]
