"""Request and response models of the REST API (``/api/v1``).

They carry UIDs, states, timings, rule and pipeline names, never a patient's
name or ID.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class LoginRequest(_Model):
    """A login: user name and password."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SessionInfo(_Model):
    """Who is logged in, and the CSRF token every changing call must send
    back in the ``X-CSRF-Token`` header."""

    user: str
    role: str
    csrf_token: str
    expires_at: float


class Problem(_Model):
    """An error: what went wrong, and per field, why (``field: reason``)."""

    detail: str
    problems: list[str] = []


class Dashboard(_Model):
    """The node at a glance."""

    instances_received: int
    studies_received: int
    jobs_by_state: dict[str, dict[str, int]]
    deliveries_failing: int
    dead_runs: int
    disk_free_bytes: int | None
    disk_floor_bytes: int
    latency_24h: dict[str, dict[str, float]]


class ModelOut(_Model):
    """A model a pipeline loads, as its manifest declares it."""

    name: str
    version: str
    sha256: str


class PipelineOut(_Model):
    """A pipeline the rules route to: version, models, device, warm or not."""

    name: str
    version: str | None
    rules: list[str]
    models: list[ModelOut]
    device: str
    warm: bool
    problems: list[str]


class RulesText(_Model):
    """The ``routing:`` section of the configuration file, as YAML text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = Field(max_length=200_000)


class RulesCheck(_Model):
    """Whether edited rules validate with the rest of the file; each problem
    starts with its field path (``routing.rules.0.pipeline: ...``)."""

    ok: bool
    problems: list[str]
    warnings: list[str]


class DryRunRequest(_Model):
    """Edited rules to try against the last ``last`` received studies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = Field(max_length=200_000)
    last: int = Field(default=20, ge=1, le=500)


class Done(_Model):
    """A change that was made."""

    ok: bool
    message: str
