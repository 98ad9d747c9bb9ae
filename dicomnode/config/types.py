"""Validated scalar types shared by the configuration models."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError("an AE title must not be empty or only spaces")
    if len(stripped) > 16:
        raise ValueError(f"an AE title has at most 16 characters, this one has {len(stripped)}")
    if "\\" in stripped or any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in stripped):
        raise ValueError("an AE title may hold only printable ASCII characters and no backslash")
    return stripped


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from exc
    return value


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
IPAddress = Annotated[str, AfterValidator(_check_ip)]
