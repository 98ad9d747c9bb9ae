"""The on-disk instance store: atomic, durable writes under UID-safe paths."""

from dicomnode.spool.store import Spool, StoredFile
from dicomnode.spool.uids import validate_uid

__all__ = ["Spool", "StoredFile", "validate_uid"]
