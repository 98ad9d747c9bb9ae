"""The ``console`` section: the web console and its REST API."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dicomnode.config.types import IPAddress


class ConsoleConfig(BaseModel):
    """The admin console (server-rendered pages) and the REST API under
    ``/api/v1``, served by ``dicomnode serve`` on a port of its own.

    Every page and API call needs a login (``dicomnode users add``), except
    ``/healthz``, ``/readyz`` and ``/metrics``, which carry no patient data.
    The console refuses to listen beyond loopback while no user exists.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="Serve the console and the REST API.")
    host: IPAddress = Field(
        default="127.0.0.1",
        description=(
            "Address to listen on; loopback unless admins reach it from elsewhere (put TLS "
            "in front of it then)."
        ),
    )
    port: int = Field(default=8480, ge=1, le=65535)
    session_minutes: float = Field(
        default=480, gt=0, le=10080, description="How long a login lasts without a new one."
    )
    users_db: Path | None = Field(
        default=None, description="The users' SQLite file; default: <data_dir>/console.db."
    )
    max_failed_logins: int = Field(
        default=5, ge=1, le=100, description="Failed logins in a row that lock a user out."
    )
    lockout_minutes: float = Field(
        default=15, gt=0, le=1440, description="How long a locked-out user must wait."
    )
    secure_cookies: bool = Field(
        default=False,
        description=(
            "Mark the session cookie Secure (sent over HTTPS only): set it when a TLS proxy "
            "serves the console. It is always HttpOnly and SameSite=Strict."
        ),
    )
