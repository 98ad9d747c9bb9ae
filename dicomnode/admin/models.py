"""What the admin layer answers: pydantic models the CLI prints and the web serves.

Times are seconds since the epoch (UTC); ``None`` where a thing has not
happened. Patient identifiers appear only in the fields that say so; they come
from the audit trail, never from a log.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StudyFilter(_Model):
    """Which studies to list; every field given must match."""

    study_instance_uid: str | None = Field(default=None, description="The study's UID exactly.")
    accession_number: str | None = Field(default=None, description="As received, exactly.")
    patient_id: str | None = Field(default=None, description="As received, exactly.")
    since: float | None = Field(default=None, description="Received at or after this time.")
    until: float | None = Field(default=None, description="Received before this time.")
    state: str | None = Field(default=None, description="A job of the study is in this state.")
    calling_ae: str | None = Field(default=None, description="Sent by this AE title.")
    rule: str | None = Field(default=None, description="A run of the study came from this rule.")
    limit: int = Field(default=50, ge=1, le=10_000)


class StudySummary(_Model):
    """One study in a listing."""

    study_instance_uid: str
    accession_number: str | None = Field(description="From the audit trail.")
    patient_id: str | None = Field(description="From the audit trail.")
    modalities: str
    series_count: int
    instance_count: int
    rounds: int
    state: str = Field(description="The state of the latest round.")
    run_states: dict[str, int] = Field(description="How many runs of the study are in each state.")
    calling_aes: list[str]
    rules: list[str]
    first_received_at: float
    last_received_at: float
    held: bool = Field(description="Whether a job of the study is held.")
    purged_rounds: int
    purged_at: float | None = Field(default=None, description="When retention last purged it.")
    duplicate_count: int = Field(default=0, description="Copies received again.")
    conflict_count: int = Field(
        default=0, description="Duplicates whose content differed from the copy kept."
    )


class JobRow(_Model):
    """One job in a listing: a study round or a pipeline run."""

    id: int
    kind: str
    study_instance_uid: str
    round: int
    state: str
    pipeline: str | None
    rule: str | None
    calling_ae: str
    instance_count: int
    attempts: int
    opened_at: float
    updated_at: float
    reason: str | None
    held: bool
    purged: bool


class TransitionRow(_Model):
    """One step of a job's history."""

    from_state: str | None
    to_state: str
    at: float
    seconds_in_state: float | None = Field(description="Until the next step; None for the last.")
    reason: str | None


class DeliveryRow(_Model):
    """One delivery: an object or a notification for one destination."""

    id: int
    job_id: int
    study_instance_uid: str | None
    destination: str
    kind: str
    object: str = Field(description="The object's file name, or the message type and control ID.")
    sop_instance_uid: str | None
    state: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None


class RunDetail(_Model):
    """A job (a study round or a pipeline run) with its history and deliveries."""

    id: int
    kind: str
    study_instance_uid: str
    round: int
    parent_id: int | None
    state: str
    calling_ae: str
    pipeline: str | None
    rule: str | None
    series_instance_uid: str | None
    destinations: list[str]
    notify: list[str]
    instance_count: int
    attempts: int
    reason: str | None
    opened_at: float
    updated_at: float
    result_dir: str | None
    purged_at: float | None
    held_at: float | None
    held_by: str | None
    shadow: bool
    result_status: str | None = Field(description="A run's (preliminary or final); None: a round.")
    traceback: str | None
    history: list[TransitionRow]
    deliveries: list[DeliveryRow]


class RoundDetail(_Model):
    """One assembly round of a study with the runs it was routed to."""

    round: RunDetail
    runs: list[RunDetail]


class StudyDetail(_Model):
    """A study with every round, run and delivery."""

    summary: StudySummary
    rounds: list[RoundDetail]


class ActionResult(_Model):
    """What an admin action did to one job."""

    action: str
    job_id: int
    study_instance_uid: str
    before: str = Field(description="The job's state before.")
    after: str = Field(description="The job's state after.")
    held: bool
    message: str
    audit_id: int


class RuleCheck(_Model):
    """Why one rule matched a study or did not."""

    rule: str
    matched: bool
    is_fallback: bool
    reasons: list[str]


class PlannedRunRow(_Model):
    """One run a routing decision asks for."""

    rule: str
    pipeline: str
    series_instance_uid: str
    destinations: list[str]
    notify: list[str]
    priority: int
    shadow: bool


class RouteExplanation(_Model):
    """Where a study goes under a set of rules, rule by rule."""

    study_instance_uid: str
    round: int | None = Field(description="The round explained; None for files outside the store.")
    calling_ae: str
    discarded: bool
    used_fallback: bool
    runs: list[PlannedRunRow]
    rules: list[RuleCheck]
    text: str = Field(description="The same, as the lines `route explain` prints.")
    series_count: int = Field(default=0, description="Series of the study routing saw.")
    round_count: int | None = Field(default=None, description="Rounds the study has.")
    round_state: str | None = Field(default=None, description="The explained round's state.")
    round_instances: int | None = Field(default=None, description="Instances in that round.")


class DryRunRow(_Model):
    """One recent study: what the rules routed it to then, and what they would now."""

    study_instance_uid: str
    round: int
    received_at: float
    before: list[str] = Field(description="Rules of the runs the round got when it was routed.")
    after: list[str] = Field(description="Rules that would match it under the rules tried.")
    changed: bool
    explanation: RouteExplanation | None = Field(
        description="None when the round's instances are no longer kept."
    )
    note: str | None


class DestinationRow(_Model):
    """One configured destination."""

    name: str
    type: str
    target: str = Field(description="AE title@host:port, host:port, or the folder.")
    tls: bool
    used_by: list[str] = Field(description="Rules that deliver to it or notify it.")


class DestinationTest(_Model):
    """The outcome of testing whether a destination can be reached."""

    destination: str
    type: str
    target: str = Field(description="host:port (and AE title), or the folder.")
    ok: bool
    detail: str
    seconds: float
    audit_id: int | None


class ConfigValidation(_Model):
    """Whether a configuration validates; the problems name their field paths."""

    ok: bool
    source: str
    problems: list[str]
    warnings: list[str]


class ReloadResult(_Model):
    """What a configuration reload did."""

    applied: bool = Field(description="The running node took the new configuration.")
    node_running: bool
    node_pid: int | None
    source: str
    problems: list[str] = Field(description="Why the file was refused (field paths).")
    changed_sections: list[str] = Field(description="Top-level sections that differ.")
    restart_needed: list[str] = Field(
        description="Changed sections a reload cannot apply (the node keeps the old values)."
    )
    message: str
    audit_id: int | None


class SaveResult(_Model):
    """A configuration file rewritten after validation, the old one kept."""

    path: str
    backup_path: str | None
    audit_id: int


class AuditRow(_Model):
    """One audit event."""

    id: int
    at: float
    event: str
    actor: str
    action: str
    target: str
    outcome: str
    study_instance_uid: str | None
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    address: str | None
    detail: dict[str, object]


class AuditFilter(_Model):
    """Which audit events to list."""

    since: float | None = None
    until: float | None = None
    event: str | None = None
    actor: str | None = None
    study_instance_uid: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    limit: int = Field(default=100, ge=1, le=100_000)
