"""UID validation: a UID is used in a path only after it passed here."""

from __future__ import annotations

import re

from dicomnode.errors import InvalidUIDError

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
MAX_UID_LENGTH = 64


def validate_uid(value: object, name: str = "UID") -> str:
    """Return ``value`` as a clean UID string or raise.

    Trailing NUL and space padding (which DICOM allows on the wire) is removed.
    Leading zeros in a component are tolerated: they are invalid DICOM but
    harmless in a path, and some modalities send them.

    Parameters
    ----------
    value : object
        The candidate, usually a ``pydicom.uid.UID`` or ``str``.
    name : str
        The attribute's name, used in the error message.

    Returns
    -------
    str
        The UID, digits and dots only, at most 64 characters.

    Raises
    ------
    InvalidUIDError
        Missing, empty, too long, or holding anything but digits and dots.
    """
    if value is None:
        raise InvalidUIDError(f"{name} is missing")
    if not isinstance(value, str):
        raise InvalidUIDError(f"{name} is not a string")
    uid = value.rstrip("\x00 ")
    if not uid:
        raise InvalidUIDError(f"{name} is empty")
    if len(uid) > MAX_UID_LENGTH:
        raise InvalidUIDError(f"{name} has {len(uid)} characters, at most 64 are allowed")
    if _UID.fullmatch(uid) is None:
        raise InvalidUIDError(f"{name} must be digits separated by single dots")
    return uid
