"""Rows of the job store, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

from dicomnode.jobs.states import JobState


@dataclass(frozen=True)
class InstanceRecord:
    """What the node keeps about one received instance (no patient data)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    path: str
    size: int
    calling_ae: str
    received_at: float


@dataclass(frozen=True)
class RecordOutcome:
    """The result of recording an instance.

    Attributes
    ----------
    job_id : int
        The assembly round (job) the instance belongs to.
    duplicate : bool
        ``True`` when the SOP Instance UID was already recorded; the first copy
        is kept and only the duplicate counter moved.
    kept_path : str
        The path of the copy the store keeps.
    new_round : bool
        ``True`` when this instance opened a new assembly round.
    """

    job_id: int
    duplicate: bool
    kept_path: str
    new_round: bool


@dataclass(frozen=True)
class JobRecord:
    """What a study round and a run both are: one row of the job store with a
    state, its timestamps and the study it belongs to.

    ``purged_at`` is set when retention removed the job's files (a round's
    instances, a run's results and objects); the row and its history stay.
    A run copies ``calling_ae``, ``last_instance_at`` and ``instance_count``
    from its round; its ``opened_at`` is when the rule asked for it.
    """

    id: int
    study_instance_uid: str
    round: int
    state: JobState
    calling_ae: str
    opened_at: float
    last_instance_at: float
    instance_count: int
    attempts: int
    reason: str | None
    updated_at: float
    priority: int = 0
    next_attempt_at: float | None = None
    traceback: str | None = None
    purged_at: float | None = None
    held_at: float | None = None
    """When an admin held the job: it is not routed, run or delivered until released."""
    held_by: str | None = None
    """Who held it."""


@dataclass(frozen=True)
class StudyRound(JobRecord):
    """An assembly round of a study: RECEIVED → COMPLETE → ROUTED or DISCARDED.
    A study sent again after its round completed opens the next round."""

    kind: ClassVar[Literal["study"]] = "study"


@dataclass(frozen=True, kw_only=True)
class Run(JobRecord):
    """One pipeline run a rule asked for (ROUTED → RUNNING → RESULTS_WRITTEN →
    ... → DONE); ``parent_id`` is its study round.

    ``result_status`` (``preliminary`` or ``final``) and ``notify_after``
    (``delivered`` or ``written``) come from its rule, and so do ``shadow`` (a
    candidate pipeline's run beside the production one: its results are kept,
    never delivered) and ``out_of_range`` (``flag`` or ``refuse``: what a study
    outside the pipeline's validated range gets).
    """

    kind: ClassVar[Literal["run"]] = "run"
    parent_id: int
    pipeline: str
    series_instance_uid: str | None = None
    rule: str | None = None
    destinations: tuple[str, ...] = ()
    notify: tuple[str, ...] = ()
    result_dir: str | None = None
    outbox_dir: str | None = None
    result_status: str = "preliminary"
    notify_after: str = "delivered"
    shadow: bool = False
    out_of_range: str = "flag"
    claimed_by: str | None = None
    """The worker that holds a RUNNING run (``runner.executor: celery``)."""
    lease_until: float | None = None
    """Until when the worker's claim holds unless renewed; past it the run is reclaimed."""
    queued_at: float | None = None
    """When the run was last sent to its pipeline's queue (``celery``)."""


Job: TypeAlias = StudyRound | Run
"""A row of the job store: a study round or a run (tell them apart with
``isinstance`` or by ``kind``)."""


@dataclass(frozen=True)
class Transition:
    """One timestamped state change of a job."""

    job_id: int
    from_state: JobState | None
    to_state: JobState
    at: float
    reason: str | None


@dataclass(frozen=True)
class Study:
    """What the store knows about a study across all its rounds.

    The counts of modalities, series, instances and duplicates are of the
    instances the spool still holds (``conflict_count``: the duplicates whose
    content differed from the copy kept); ``purged_rounds`` rounds had theirs removed
    by retention, the last time at ``purged_at``.
    """

    study_instance_uid: str
    modalities: str
    series_count: int
    instance_count: int
    duplicate_count: int
    rounds: int
    first_received_at: float
    last_received_at: float
    latest_state: JobState
    purged_rounds: int = 0
    purged_at: float | None = None
    conflict_count: int = 0


@dataclass(frozen=True)
class RunSpec:
    """One pipeline run a routing decision asks for."""

    rule: str
    pipeline: str
    series_instance_uid: str
    destinations: tuple[str, ...] = ()
    notify: tuple[str, ...] = ()
    priority: int = 0
    result_status: str = "preliminary"
    notify_after: str = "delivered"
    shadow: bool = False
    """A candidate's run in shadow mode: no destinations, no notifications."""
    out_of_range: str = "flag"
    """``flag`` or ``refuse`` a study outside the pipeline's validated range."""


@dataclass(frozen=True)
class OutboxItem:
    """One delivery: an object (or a notification) for one destination.

    What is delivered is recorded when the results are written; export only
    transports it.

    Attributes
    ----------
    kind : str
        ``"dicom"``: the object file at ``path``; ``"notification"``: the
        message in ``body``.
    path : str
        The object's file (``""`` for a notification).
    state : str
        PENDING, DELIVERED or DEAD.
    sop_class_uid, sop_instance_uid, study_instance_uid, series_instance_uid : str or None
        The object's UIDs (``None`` for notifications, and for rows queued by
        a release before schema version 4).
    body : str or None
        The notification's message, as built when the results were written
        (``None`` for objects, and for notifications queued before schema 4).
    refers_to : tuple of str
        SOP Instance UIDs of the objects the notification names.
    """

    id: int
    job_id: int
    destination: str
    kind: str
    path: str
    state: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    body: str | None = None
    refers_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class PurgePlan:
    """What retention removes of one study whose work is all finished.

    Attributes
    ----------
    study_instance_uid : str
        The study.
    jobs : tuple of Job
        Its jobs not purged yet, as they were read; the purge is recorded only
        if each is still in the same state with the same ``updated_at``.
    files : tuple of str
        The instance files of those jobs and the result objects of their runs.
    folders : tuple of str
        The runs' result and outbox folders.
    """

    study_instance_uid: str
    jobs: tuple[Job, ...]
    files: tuple[str, ...]
    folders: tuple[str, ...]
