"""Deterministic UIDs: the same inputs and pipeline version give the same UIDs,
so a re-run replaces its earlier objects instead of duplicating them."""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicomnode:results")


def derived_uid(*parts: object) -> str:
    """A UID ``2.25.<n>`` (PS3.5 B.2) whose UUID is a name-based (SHA-1,
    version 5) UUID of ``parts``: the same parts always give the same UID.

    Parameters
    ----------
    *parts : object
        Everything that identifies the object: e.g. the source series UID,
        the pipeline name and version, the kind of object and its index.
    """
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"
