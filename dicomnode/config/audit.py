"""The ``audit`` section: where the audit trail is also sent."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SyslogConfig(BaseModel):
    """A syslog collector (an IHE ATNA Audit Record Repository) that receives
    each audit event as a DICOM audit message (PS3.15 A.5) in an RFC 5424
    syslog message.

    The messages carry patient identifiers, as the audit trail does: send them
    over a network the site trusts (``tcp`` to a collector on the same host or
    a management network; TLS, RFC 5425, is not supported).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(default=514, ge=1, le=65535)
    transport: Literal["udp", "tcp"] = Field(
        default="udp", description="udp (RFC 5426) or tcp with octet counting (RFC 6587)."
    )
    app_name: str = Field(default="dicomnode", min_length=1, max_length=48, pattern=r"^[!-~]+$")
    poll_seconds: float = Field(default=1.0, gt=0, description="How often new events are sent.")


class AuditConfig(BaseModel):
    """The audit trail itself is always kept in the job store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    syslog: SyslogConfig | None = Field(
        default=None, description="Also send every event to this collector; unset: no."
    )
