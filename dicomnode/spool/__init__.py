"""The on-disk instance store: atomic, durable writes under UID-safe paths, retention."""

from dicomnode.spool.retention import PurgeReport, RetentionSweeper, purge_study, remove_files
from dicomnode.spool.store import Spool, StoredFile
from dicomnode.spool.uids import validate_uid

__all__ = [
    "PurgeReport",
    "RetentionSweeper",
    "Spool",
    "StoredFile",
    "purge_study",
    "remove_files",
    "validate_uid",
]
