"""The ``metrics`` section: the node's own metrics and health endpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dicomnode.config.types import IPAddress


class MetricsConfig(BaseModel):
    """A small HTTP listener serving ``/metrics`` (Prometheus), ``/healthz``
    and ``/readyz``, started by ``dicomnode serve``.

    It answers without a login: keep it on loopback (the default) or on a
    management network. The metrics carry no patient data.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="Serve /metrics, /healthz and /readyz.")
    host: IPAddress = Field(
        default="127.0.0.1", description="Address to listen on; loopback unless scraped remotely."
    )
    port: int = Field(default=9112, ge=1, le=65535)
