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


class StudySummary(_Model):
    """One study as the node holds it."""

    study_instance_uid: str
    modalities: str
    series_count: int
    instance_count: int
    rounds: int
    first_received_at: float
    last_received_at: float
    latest_state: str


class TransitionOut(_Model):
    """One state change of a job."""

    from_state: str | None
    to_state: str
    at: float
    reason: str | None


class DeliveryOut(_Model):
    """One delivery of a run: an object or a notification to a destination."""

    id: int
    job_id: int
    destination: str
    kind: str
    state: str
    attempts: int
    last_error: str | None
    sop_class_uid: str | None
    sop_instance_uid: str | None
    series_instance_uid: str | None
    has_file: bool


class JobOut(_Model):
    """A study's assembly round (``kind: study``) or a pipeline run (``kind: run``)."""

    id: int
    kind: str
    study_instance_uid: str
    round: int
    parent_id: int | None
    state: str
    calling_ae: str
    instance_count: int
    attempts: int
    reason: str | None
    opened_at: float
    updated_at: float
    pipeline: str | None
    rule: str | None
    series_instance_uid: str | None
    destinations: list[str]
    notify: list[str]
    result_status: str
    purged: bool
    has_preview: bool
    transitions: list[TransitionOut]
    deliveries: list[DeliveryOut]


class StudyDetail(_Model):
    """A study with every round, run, state change and delivery."""

    study: StudySummary
    jobs: list[JobOut]


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


class ActionResult(_Model):
    """What a changing call did."""

    ok: bool
    message: str
    job_ids: list[int] = []


class LoginRecord(_Model):
    """One login attempt."""

    at: float
    user: str
    outcome: str
    address: str


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
