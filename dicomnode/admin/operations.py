"""The operations the CLI and the web console share.

:class:`Admin` is built from the loaded configuration and the job store. It
reads (studies, jobs, deliveries, the audit trail, routing explanations) and
acts (retry, replay, hold, release, discard, test a destination, save and
reload the configuration). Every action takes ``actor`` (who does it) and
appends its audit row, refused attempts included; legal moves are checked in
:mod:`dicomnode.jobs.states`, and a refusal raises a
:class:`~dicomnode.errors.DicomNodeError` whose message says why.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import yaml

from dicomnode.admin import reload as reloading
from dicomnode.admin.models import (
    ActionResult,
    AuditFilter,
    AuditRow,
    ConfigValidation,
    DeliveryRow,
    DestinationRow,
    DestinationTest,
    DryRunRow,
    JobRow,
    PlannedRunRow,
    ReloadResult,
    RoundDetail,
    RouteExplanation,
    RuleCheck,
    RunDetail,
    SaveResult,
    StudyDetail,
    StudyFilter,
    StudySummary,
    TransitionRow,
)
from dicomnode.admin.probe import check_folder, connect_hl7, echo_dicom
from dicomnode.config import Settings, load_config
from dicomnode.config.destinations import DicomDestination, HL7Destination
from dicomnode.config.rules import RoutingConfig
from dicomnode.errors import ConfigError, DicomNodeError, JobStoreError, NotFoundError
from dicomnode.jobs import (
    AuditEntry,
    AuditEvent,
    AuditRecord,
    Job,
    JobState,
    OutboxItem,
    Run,
    SQLJobStore,
    Study,
)
from dicomnode.jobs.ports import AdminStore
from dicomnode.routing import RoutingDecision, describe_study, explain_text, route

if TYPE_CHECKING:
    from dicomnode.monitoring.drift import PipelineDrift
    from dicomnode.monitoring.shadow import PairSummary

#: The longest a reload waits for the running node to say it applied the file.
RELOAD_WAIT_SECONDS = 20.0


def _delivered_what(item: OutboxItem) -> str:
    if item.kind != "notification":
        return Path(item.path).name
    if item.body is None:
        return "(no message)"
    from dicomnode.export.hl7 import message_control_id

    return f"ORU^R01 {message_control_id(item.body)}"


def delivery_row(item: OutboxItem) -> DeliveryRow:
    """An outbox row as the admin layer shows it."""
    return DeliveryRow(
        id=item.id,
        job_id=item.job_id,
        study_instance_uid=item.study_instance_uid,
        destination=item.destination,
        kind=item.kind,
        object=_delivered_what(item),
        sop_instance_uid=item.sop_instance_uid,
        state=item.state,
        attempts=item.attempts,
        next_attempt_at=item.next_attempt_at,
        last_error=item.last_error,
    )


def audit_row(record: AuditRecord) -> AuditRow:
    """An audit record as the admin layer shows it."""
    entry = record.entry
    return AuditRow(
        id=record.id,
        at=record.at,
        event=str(entry.event),
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        outcome=entry.outcome,
        study_instance_uid=entry.study_instance_uid,
        patient_id=entry.patient_id,
        patient_name=entry.patient_name,
        accession_number=entry.accession_number,
        address=entry.address,
        detail=dict(entry.detail),
    )


def _explanation(
    decision: RoutingDecision, round_number: int | None, calling_ae: str, series_count: int
) -> RouteExplanation:
    return RouteExplanation(
        study_instance_uid=decision.study_instance_uid,
        round=round_number,
        calling_ae=calling_ae,
        discarded=decision.discarded,
        used_fallback=decision.used_fallback,
        runs=[
            PlannedRunRow(
                rule=run.rule,
                pipeline=run.pipeline,
                series_instance_uid=run.series_instance_uid,
                destinations=list(run.destinations),
                notify=list(run.notify),
                priority=run.priority,
                shadow=run.shadow,
            )
            for run in decision.runs
        ],
        rules=[
            RuleCheck(
                rule=e.rule, matched=e.matched, is_fallback=e.is_fallback, reasons=list(e.reasons)
            )
            for e in decision.explanations
        ],
        text=explain_text(decision),
        series_count=series_count,
    )


def explain_files(
    paths: list[Path], routing: RoutingConfig, calling_ae: str = ""
) -> list[RouteExplanation]:
    """Where the studies in some files would be routed under ``routing``
    (no job store needed)."""
    return [
        _explanation(route(study, routing), None, calling_ae, len(study.series))
        for study in describe_study(paths, calling_ae)
        if study.study_instance_uid
    ]


def destination_rows(settings: Settings) -> list[DestinationRow]:
    """The configured destinations, by name, with the rules that use each (no
    job store needed)."""
    rules = [*settings.routing.rules, *filter(None, [settings.routing.fallback])]
    rows = []
    for name, target in sorted(settings.destinations.items()):
        if isinstance(target, DicomDestination):
            where = f"{target.ae_title}@{target.host}:{target.port}"
        elif isinstance(target, HL7Destination):
            where = f"{target.host}:{target.port}"
        else:
            where = str(target.path)
        rows.append(
            DestinationRow(
                name=name,
                type=target.type,
                target=where,
                tls=getattr(target, "tls", None) is not None,
                used_by=[r.name for r in rules if name in r.destinations or name in r.notify],
            )
        )
    return rows


class Admin:
    """The admin layer over one node's configuration and job store.

    Parameters
    ----------
    settings : Settings
        The loaded configuration.
    store : AdminStore
        The node's job store (the admin layer does not close a store it was given).
    config_path : Path, optional
        The YAML file ``settings`` came from: needed to save and reload it.
    clock : callable, optional
        The current time in seconds since the epoch.
    """

    def __init__(
        self,
        settings: Settings,
        store: AdminStore,
        *,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.config_path = config_path
        self.clock = clock
        self._owns_store = False

    @classmethod
    def open(cls, config_path: str | Path) -> Admin:
        """Load ``config_path`` and open the node's job store.

        Raises
        ------
        ConfigError
            The file is invalid.
        DicomNodeError
            The node never ran (no job store yet).
        """
        path = Path(config_path)
        settings = load_config(path)
        if settings.database.is_sqlite and not settings.database_path.exists():
            raise DicomNodeError(
                f"no job store at {settings.database_path} (has the node run yet?)"
            )
        admin = cls(settings, SQLJobStore(settings.database_url), config_path=path)
        admin._owns_store = True
        return admin

    @classmethod
    def open_for_reload(cls, config_path: str | Path) -> Admin:
        """:meth:`open`, for :meth:`reload` only: a file invalid outside its
        storage and database sections still finds the node (its problems are
        reported, and audited, by :meth:`reload`)."""
        path = Path(config_path)
        settings = reloading.where_the_node_runs(path)
        if settings.database.is_sqlite and not settings.database_path.exists():
            raise DicomNodeError(
                f"no job store at {settings.database_path} (has the node run yet?)"
            )
        admin = cls(settings, SQLJobStore(settings.database_url), config_path=path)
        admin._owns_store = True
        return admin

    def close(self) -> None:
        """Close the job store if :meth:`open` opened it."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- studies and jobs -------------------------------------------------

    def _identifiers(self, study_uid: str) -> tuple[str | None, str | None]:
        records = self.store.audit_records(
            event=str(AuditEvent.INSTANCES_STORED), study_instance_uid=study_uid, limit=1
        )
        if not records:
            return None, None
        entry = records[0].entry
        return entry.accession_number, entry.patient_id

    def _summary(self, study: Study, jobs: list[Job]) -> StudySummary:
        accession, patient_id = self._identifiers(study.study_instance_uid)
        runs = [j for j in jobs if isinstance(j, Run)]
        run_states: dict[str, int] = {}
        for run in runs:
            run_states[str(run.state)] = run_states.get(str(run.state), 0) + 1
        return StudySummary(
            study_instance_uid=study.study_instance_uid,
            accession_number=accession,
            patient_id=patient_id,
            modalities=study.modalities,
            series_count=study.series_count,
            instance_count=study.instance_count,
            rounds=study.rounds,
            state=str(study.latest_state),
            run_states=run_states,
            calling_aes=sorted({j.calling_ae for j in jobs if j.kind == "study" and j.calling_ae}),
            rules=sorted({r.rule for r in runs if r.rule}),
            first_received_at=study.first_received_at,
            last_received_at=study.last_received_at,
            held=any(j.held_at is not None for j in jobs),
            purged_rounds=study.purged_rounds,
            purged_at=study.purged_at,
            duplicate_count=study.duplicate_count,
            conflict_count=study.conflict_count,
        )

    def studies(self, query: StudyFilter | None = None) -> list[StudySummary]:
        """The studies matching ``query``, most recently received first."""
        query = query or StudyFilter()
        wanted: set[str] | None = None
        if query.accession_number is not None or query.patient_id is not None:
            records = self.store.audit_records(
                event=str(AuditEvent.INSTANCES_STORED),
                accession_number=query.accession_number,
                patient_id=query.patient_id,
            )
            wanted = {r.entry.study_instance_uid for r in records if r.entry.study_instance_uid}
        found: list[StudySummary] = []
        for study in self.store.studies():
            uid = study.study_instance_uid
            if query.study_instance_uid is not None and uid != query.study_instance_uid:
                continue
            if wanted is not None and uid not in wanted:
                continue
            if query.since is not None and study.last_received_at < query.since:
                continue
            if query.until is not None and study.first_received_at >= query.until:
                continue
            jobs = self.store.jobs(study_instance_uid=uid)
            if query.state is not None and not any(str(j.state) == query.state for j in jobs):
                continue
            if query.calling_ae is not None and not any(
                j.calling_ae == query.calling_ae for j in jobs
            ):
                continue
            if query.rule is not None and not any(
                isinstance(j, Run) and j.rule == query.rule for j in jobs
            ):
                continue
            found.append(self._summary(study, jobs))
            if len(found) >= query.limit:
                break
        return found

    def _detail(self, job: Job) -> RunDetail:
        history = self.store.history(job.id)
        steps = []
        for i, step in enumerate(history):
            until = history[i + 1].at if i + 1 < len(history) else None
            steps.append(
                TransitionRow(
                    from_state=None if step.from_state is None else str(step.from_state),
                    to_state=str(step.to_state),
                    at=step.at,
                    seconds_in_state=None if until is None else max(0.0, until - step.at),
                    reason=step.reason,
                )
            )
        run = job if isinstance(job, Run) else None
        return RunDetail(
            id=job.id,
            kind=job.kind,
            study_instance_uid=job.study_instance_uid,
            round=job.round,
            parent_id=run.parent_id if run else None,
            state=str(job.state),
            calling_ae=job.calling_ae,
            pipeline=run.pipeline if run else None,
            rule=run.rule if run else None,
            series_instance_uid=run.series_instance_uid if run else None,
            destinations=list(run.destinations) if run else [],
            notify=list(run.notify) if run else [],
            instance_count=job.instance_count,
            attempts=job.attempts,
            reason=job.reason,
            opened_at=job.opened_at,
            updated_at=job.updated_at,
            result_dir=run.result_dir if run else None,
            purged_at=job.purged_at,
            held_at=job.held_at,
            held_by=job.held_by,
            shadow=run is not None and run.shadow,
            result_status=run.result_status if run else None,
            traceback=job.traceback,
            history=steps,
            deliveries=[delivery_row(item) for item in self.store.outbox(job.id)],
        )

    def jobs(
        self,
        *,
        state: str | None = None,
        study_uid: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[JobRow]:
        """Jobs, newest first; ``since``: updated at or after that time."""
        found = []
        for job in self.store.jobs(
            study_instance_uid=study_uid, state=None if state is None else JobState(state)
        ):
            if since is not None and job.updated_at < since:
                continue
            found.append(
                JobRow(
                    id=job.id,
                    kind=job.kind,
                    study_instance_uid=job.study_instance_uid,
                    round=job.round,
                    state=str(job.state),
                    pipeline=job.pipeline if isinstance(job, Run) else None,
                    rule=job.rule if isinstance(job, Run) else None,
                    calling_ae=job.calling_ae,
                    instance_count=job.instance_count,
                    attempts=job.attempts,
                    opened_at=job.opened_at,
                    updated_at=job.updated_at,
                    reason=job.reason,
                    held=job.held_at is not None,
                    purged=job.purged_at is not None,
                )
            )
            if len(found) >= limit:
                break
        return found

    def job(self, job_id: int) -> RunDetail:
        """One job with its history and deliveries.

        Raises
        ------
        NotFoundError
            No such job.
        """
        return self._detail(self.store.get_job(job_id))

    def study(self, study_uid: str) -> StudyDetail:
        """A study with every round, run and delivery.

        Raises
        ------
        NotFoundError
            The node holds no such study.
        """
        matches = [s for s in self.store.studies() if s.study_instance_uid == study_uid]
        if not matches:
            raise NotFoundError(f"no study {study_uid}")
        jobs = self.store.jobs(study_instance_uid=study_uid)
        rounds = sorted((j for j in jobs if j.kind == "study"), key=lambda j: j.round)
        return StudyDetail(
            summary=self._summary(matches[0], jobs),
            rounds=[
                RoundDetail(
                    round=self._detail(r),
                    runs=[
                        self._detail(run)
                        for run in sorted(jobs, key=lambda j: j.id)
                        if run.kind == "run" and run.parent_id == r.id
                    ],
                )
                for r in rounds
            ],
        )

    def deliveries(
        self,
        *,
        state: str | None = None,
        destination: str | None = None,
        study_uid: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRow]:
        """Deliveries, newest first (``state`` ``DEAD``: the dead letters)."""
        rows: list[DeliveryRow] = []
        for job in self.store.jobs(study_instance_uid=study_uid):
            if job.kind != "run":
                continue
            for item in reversed(self.store.outbox(job.id)):
                if state is not None and item.state != state:
                    continue
                if destination is not None and item.destination != destination:
                    continue
                rows.append(delivery_row(item))
                if len(rows) >= limit:
                    return rows
        return rows

    # -- monitoring (read only) ----------------------------------------------

    def drift(self) -> list[PipelineDrift]:
        """The latest drift comparison of every pipeline with descriptors."""
        from dicomnode.monitoring.drift import check_pipeline

        return [
            check_pipeline(self.store, pipeline, self.settings.monitoring, self.clock())
            for pipeline in self.store.descriptor_pipelines()
        ]

    def shadow_report(
        self, rule: str | None = None
    ) -> tuple[list[PairSummary], list[dict[str, object]]]:
        """How far each rule's shadow candidate agrees with its pipeline, and the
        promotions made (of ``rule`` only, when given)."""
        from dicomnode.monitoring.shadow import summarize

        summaries = summarize(self.store.agreements(rule))
        promotions = self.store.promotions()
        if rule is not None:
            promotions = [p for p in promotions if p["rule"] == rule]
        return summaries, promotions

    def corrections(self) -> list[dict[str, object]]:
        """The radiologists' corrections received, their scores parsed."""
        import json

        rows = self.store.corrections()
        for row in rows:
            row["scores"] = json.loads(str(row["scores"])) if row["scores"] else None
        return rows

    def preview(self, *, study_uid: str | None = None, job_id: int | None = None) -> bytes:
        """A PNG of a run's key slice: the SEG's segments in their colours, or a
        radiograph's heatmap, over the source image. ``job_id``: that run;
        ``study_uid``: the study's newest run with written results.

        Raises
        ------
        NotFoundError
            The study has no run with results.
        DicomNodeError
            The run's results or sources are not there (purged, or no image).
        """
        from dicomnode.preview import render_job_preview, study_runs

        if job_id is None:
            if study_uid is None:
                raise DicomNodeError("a preview needs a study UID or a job id")
            runs = study_runs(self.store, study_uid)
            if not runs:
                raise NotFoundError(f"study {study_uid} has no run with written results")
            job_id = runs[0].id
        return render_job_preview(self.store, job_id)

    def audit(self, query: AuditFilter | None = None) -> list[AuditRow]:
        """Audit events, newest first."""
        query = query or AuditFilter()
        records = self.store.audit_records(
            since=query.since,
            until=query.until,
            event=query.event,
            actor=query.actor,
            study_instance_uid=query.study_instance_uid,
            patient_id=query.patient_id,
            accession_number=query.accession_number,
            limit=query.limit,
        )
        return [audit_row(r) for r in records]

    def record_login(self, user: str, ok: bool, address: str | None, why: str = "") -> int:
        """Record a console login, or a failed one (``why``: what was wrong,
        never the password tried); return the audit row's id."""
        return self.store.record_audit(
            AuditEntry(
                AuditEvent.LOGIN,
                user,
                action="login",
                target="console",
                outcome="success" if ok else "failure",
                address=address,
                detail={"reason": why} if why else {},
            )
        )

    # -- actions on jobs ----------------------------------------------------

    def _record(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        study_uid: str | None,
        detail: dict[str, object],
    ) -> int:
        return self.store.record_audit(
            AuditEntry(
                AuditEvent.ADMIN_ACTION,
                actor,
                action=action,
                target=target,
                outcome=outcome,
                study_instance_uid=study_uid,
                detail=detail,
            )
        )

    def _act(
        self, action: str, job_id: int, actor: str, do: Callable[[], Job], message: str
    ) -> ActionResult:
        """Run one action on one job, audited whether it succeeds or is refused."""
        try:
            before = self.store.get_job(job_id)
        except NotFoundError as exc:
            self._record(actor, action, f"job {job_id}", "refused", None, {"error": str(exc)})
            raise
        try:
            after = do()
        except JobStoreError as exc:
            self._record(
                actor,
                action,
                f"job {job_id}",
                "refused",
                before.study_instance_uid,
                {"error": str(exc), "state": str(before.state)},
            )
            raise
        audit_id = self._record(
            actor,
            action,
            f"job {job_id}",
            "success",
            before.study_instance_uid,
            {
                "before": str(before.state),
                "after": str(after.state),
                "held": after.held_at is not None,
            },
        )
        return ActionResult(
            action=action,
            job_id=job_id,
            study_instance_uid=before.study_instance_uid,
            before=str(before.state),
            after=str(after.state),
            held=after.held_at is not None,
            message=message,
            audit_id=audit_id,
        )

    def retry(self, job_id: int, actor: str) -> ActionResult:
        """Run a DEAD or FAILED_RETRYABLE run again (only its failed
        deliveries, if it failed delivering).

        Raises
        ------
        IllegalTransitionError
            The job is not a DEAD or FAILED_RETRYABLE run.
        PurgedError
            Retention removed its files.
        """
        return self._act(
            "retry",
            job_id,
            actor,
            lambda: self.store.retry(job_id),
            "the running node picks it up at its next poll",
        )

    def replay(self, job_id: int, actor: str) -> ActionResult:
        """Deliver a DONE or DEAD run's results again, to every destination.

        Raises
        ------
        IllegalTransitionError
            The run is not DONE or DEAD, or wrote no results.
        PurgedError
            Retention removed its results.
        """
        return self._act(
            "replay",
            job_id,
            actor,
            lambda: self.store.replay(job_id),
            "its results are queued for delivery again",
        )

    def replay_study(self, study_uid: str, actor: str) -> list[ActionResult]:
        """Replay every DONE or DEAD run of a study that has results.

        Raises
        ------
        NotFoundError
            The study has no run with results that can be replayed.
        """
        runs = [
            j
            for j in self.store.jobs(study_instance_uid=study_uid)
            if j.kind == "run" and j.result_dir is not None and j.purged_at is None
        ]
        replayable = [j for j in runs if j.state in (JobState.DONE, JobState.DEAD)]
        if not replayable:
            self._record(
                actor,
                "replay",
                f"study {study_uid}",
                "refused",
                study_uid,
                {"error": "no finished run with results"},
            )
            raise NotFoundError(f"no finished run of study {study_uid} has results to replay")
        return [self.replay(j.id, actor) for j in sorted(replayable, key=lambda j: j.id)]

    def hold(self, job_id: int, actor: str) -> ActionResult:
        """Hold a job: not routed, run or delivered until :meth:`release`.

        Raises
        ------
        IllegalTransitionError
            It is RUNNING, finished, purged or already held.
        """
        return self._act(
            "hold",
            job_id,
            actor,
            lambda: self.store.hold_job(job_id, actor),
            "held: it waits until released",
        )

    def release(self, job_id: int, actor: str) -> ActionResult:
        """Release a held job.

        Raises
        ------
        IllegalTransitionError
            It is not held.
        """
        return self._act(
            "release",
            job_id,
            actor,
            lambda: self.store.release_job(job_id),
            "released: the node takes it up again",
        )

    def discard(self, job_id: int, actor: str) -> ActionResult:
        """Give up a DEAD or held job (→ DISCARDED; retention purges it later).

        Raises
        ------
        IllegalTransitionError
            The job is live and not held, or finished: discarding would lose work.
        """
        return self._act(
            "discard",
            job_id,
            actor,
            lambda: self.store.discard_job(job_id, f"discarded by {actor}"),
            "discarded",
        )

    # -- routing --------------------------------------------------------------

    def explain(
        self,
        study_uid: str,
        *,
        round_number: int | None = None,
        calling_ae: str | None = None,
        routing: RoutingConfig | None = None,
    ) -> RouteExplanation:
        """Why a held study goes where it goes (its latest round that still
        holds instances, or ``round_number``), under the rules in force or
        ``routing``.

        Raises
        ------
        NotFoundError
            No such study or round, or its instances were purged.
        """
        rounds = sorted(
            (j for j in self.store.jobs(study_instance_uid=study_uid) if j.kind == "study"),
            key=lambda j: j.round,
        )
        if not rounds:
            raise NotFoundError(f"no study {study_uid}")
        held = {j.round: self.store.instances_of(j.id) for j in rounds}
        if round_number is None:
            with_files = [j for j in rounds if held[j.round]]
            if not with_files:
                raise NotFoundError(
                    f"study {study_uid}: no round holds instances any more (purged by retention)"
                )
            chosen = with_files[-1]
        else:
            numbered = {j.round: j for j in rounds}
            if round_number not in numbered:
                raise NotFoundError(
                    f"study {study_uid} has rounds {', '.join(str(j.round) for j in rounds)}, "
                    f"not {round_number}"
                )
            chosen = numbered[round_number]
            if not held[chosen.round]:
                raise NotFoundError(
                    f"study {study_uid} round {round_number} holds no instances "
                    "(purged by retention)"
                )
        ae = calling_ae or chosen.calling_ae
        studies = [
            s
            for s in describe_study([Path(r.path) for r in held[chosen.round]], ae)
            if s.study_instance_uid
        ]
        if not studies:
            raise NotFoundError(f"study {study_uid}: its instances cannot be read")
        decision = route(studies[0], routing or self.settings.routing)
        return _explanation(decision, chosen.round, ae, len(studies[0].series)).model_copy(
            update={
                "round_count": len(rounds),
                "round_state": str(chosen.state),
                "round_instances": chosen.instance_count,
            }
        )

    def explain_files(
        self, paths: list[Path], calling_ae: str = "", routing: RoutingConfig | None = None
    ) -> list[RouteExplanation]:
        """Where the studies in some files would be routed."""
        return explain_files(paths, routing or self.settings.routing, calling_ae)

    def dry_run(self, routing: RoutingConfig | None = None, last: int = 20) -> list[DryRunRow]:
        """Route the last ``last`` received rounds again under ``routing`` (default:
        the rules in force) and say, for each, which rules matched then and now."""
        rounds = sorted(
            (j for j in self.store.jobs() if j.kind == "study"),
            key=lambda j: (j.last_instance_at, j.id),
            reverse=True,
        )[:last]
        rows = []
        for job in rounds:
            before = sorted(
                {
                    r.rule
                    for r in self.store.jobs(study_instance_uid=job.study_instance_uid)
                    if r.kind == "run" and r.parent_id == job.id and r.rule
                }
            )
            records = self.store.instances_of(job.id)
            explanation = None
            note = None
            after: list[str] = []
            if not records:
                note = "its instances are no longer kept (purged by retention)"
            else:
                studies = [
                    s
                    for s in describe_study([Path(r.path) for r in records], job.calling_ae)
                    if s.study_instance_uid
                ]
                if studies:
                    decision = route(studies[0], routing or self.settings.routing)
                    explanation = _explanation(
                        decision, job.round, job.calling_ae, len(studies[0].series)
                    )
                    after = sorted({run.rule for run in decision.runs})
                else:
                    note = "its instances cannot be read"
            if job.state in (JobState.RECEIVED, JobState.COMPLETE):
                note = note or f"not routed yet ({job.state})"
            rows.append(
                DryRunRow(
                    study_instance_uid=job.study_instance_uid,
                    round=job.round,
                    received_at=job.last_instance_at,
                    before=before,
                    after=after,
                    changed=explanation is not None and before != after,
                    explanation=explanation,
                    note=note,
                )
            )
        return rows

    # -- destinations ------------------------------------------------------

    def destinations(self) -> list[DestinationRow]:
        """The configured destinations, by name, with the rules that use each."""
        return destination_rows(self.settings)

    def configuration(self) -> dict[str, object]:
        """The configuration as loaded (every default filled in), as JSON values."""
        dumped: dict[str, object] = self.settings.model_dump(mode="json")
        return dumped

    def configuration_in_force(self) -> str | None:
        """The text of the file the running node last loaded (kept at each start
        and reload), or ``None`` when it kept none."""
        return reloading.in_force_text(self.settings)

    def test_destination(self, name: str, actor: str) -> DestinationTest:
        """Whether a destination can be reached now: C-ECHO for DICOM, a
        connection to the MLLP port for HL7, a writable folder for a folder.

        Raises
        ------
        NotFoundError
            No destination of that name is configured.
        """
        target = self.settings.destinations.get(name)
        if target is None:
            known = ", ".join(sorted(self.settings.destinations)) or "none"
            raise NotFoundError(f"no destination {name!r} (configured: {known})")
        started = time.monotonic()
        if isinstance(target, DicomDestination):
            where = f"{target.ae_title}@{target.host}:{target.port}"
            ok, detail = echo_dicom(target, self.settings.node.ae_title)
        elif isinstance(target, HL7Destination):
            where = f"{target.host}:{target.port}"
            ok, detail = connect_hl7(target)
        else:
            where = str(target.path)
            ok, detail = check_folder(target)
        seconds = time.monotonic() - started
        audit_id = self._record(
            actor,
            "test-destination",
            name,
            "success" if ok else "failure",
            None,
            {"type": target.type, "target": where, "detail": detail},
        )
        return DestinationTest(
            destination=name,
            type=target.type,
            target=where,
            ok=ok,
            detail=detail,
            seconds=round(seconds, 3),
            audit_id=audit_id,
        )

    # -- configuration -------------------------------------------------------

    def _path(self) -> Path:
        if self.config_path is None:
            raise ConfigError("this admin layer was built without the configuration's file")
        return self.config_path

    def validate_config(self, text: str | None = None) -> ConfigValidation:
        """Validate the configuration file, or ``text`` as its new content,
        as ``serve`` would (its rules' pipelines must be able to run)."""
        from dicomnode.runner.requirements import setup_problems

        source = str(self.config_path) if self.config_path else "<config>"
        try:
            if text is None:
                settings = load_config(self._path())
            else:
                from dicomnode.config import parse_config

                try:
                    data = yaml.safe_load(text)
                except (yaml.YAMLError, ValueError, RecursionError) as exc:
                    raise ConfigError(f"{source}: not valid YAML", [str(exc)]) from exc
                settings = parse_config(data, source)
            problems = setup_problems(settings)
        except ConfigError as exc:
            return ConfigValidation(
                ok=False, source=source, problems=exc.problems or [str(exc)], warnings=[]
            )
        return ConfigValidation(
            ok=not problems, source=source, problems=problems, warnings=settings.warnings()
        )

    def save_config(self, text: str, actor: str) -> SaveResult:
        """Rewrite the configuration file with ``text`` after validating it;
        the old file is kept as a backup beside it. Nothing is applied until
        :meth:`reload`.

        Raises
        ------
        ConfigError
            ``text`` does not validate (the file is left as it was); its
            problems name their field paths.
        """
        path = self._path()
        checked = self.validate_config(text)
        before = path.read_text(encoding="utf-8") if path.exists() else None
        if not checked.ok:
            self._record(
                actor,
                "save-config",
                str(path),
                "refused",
                None,
                {"problems": checked.problems, "before": before, "after": text},
            )
            raise ConfigError(f"{path}: invalid configuration", checked.problems)
        backup = None
        if before is not None:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
            backup = path.with_name(f"{path.name}.{stamp}.bak")
            backup.write_text(before, encoding="utf-8")
        temporary = path.with_name(f".{path.name}.tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        audit_id = self._record(
            actor,
            "save-config",
            str(path),
            "success",
            None,
            {"backup": None if backup is None else str(backup), "before": before, "after": text},
        )
        return SaveResult(
            path=str(path), backup_path=None if backup is None else str(backup), audit_id=audit_id
        )

    def promote(self, rule: str, actor: str) -> dict[str, str]:
        """Make a rule's shadow candidate its pipeline: the YAML rewritten
        (backup kept), the promotion recorded with the agreement so far, and
        audited. Applied by :meth:`reload` or a restart.

        Raises
        ------
        ConfigError
            The rule has no shadow candidate, or the file cannot be rewritten.
        """
        import json

        from dicomnode.config.promote import promote_candidate
        from dicomnode.monitoring.shadow import summarize

        path = self._path()
        summaries = [s.as_dict() for s in summarize(self.store.agreements(rule))]
        before = path.read_text(encoding="utf-8")
        try:
            promotion = promote_candidate(path, rule)
        except ConfigError as exc:
            self._record(actor, "promote", rule, "refused", None, {"error": str(exc)})
            raise
        self.store.record_promotion(
            promotion.rule,
            promotion.from_pipeline,
            promotion.to_pipeline,
            str(promotion.config_path.resolve()),
            str(promotion.backup_path.resolve()),
            actor,
            json.dumps(summaries),
        )
        self._record(
            actor,
            "promote",
            rule,
            "success",
            None,
            {
                "from": promotion.from_pipeline,
                "to": promotion.to_pipeline,
                "backup": str(promotion.backup_path),
                "before": before,
                "after": path.read_text(encoding="utf-8"),
            },
        )
        return {
            "rule": promotion.rule,
            "from_pipeline": promotion.from_pipeline,
            "to_pipeline": promotion.to_pipeline,
            "config_path": str(promotion.config_path),
            "backup_path": str(promotion.backup_path),
        }

    def node_pid(self) -> int | None:
        """The pid of the node running on this configuration's data directory."""
        return reloading.running_pid(self.settings)

    def reload(self, actor: str, *, wait: float = RELOAD_WAIT_SECONDS) -> ReloadResult:
        """Have the running node re-read its configuration file.

        The file is validated first: an invalid one is refused here (its
        problems name the field paths) and the node keeps the configuration in
        force. A valid one is announced to the node by SIGHUP; this waits up to
        ``wait`` seconds for the node's ``config-reload`` audit row and returns
        what it applied. New rules and destinations apply to studies routed
        after the reload; associations in progress are not dropped. With no
        node running, the file is only validated.
        """
        path = self._path()
        source = str(path)
        pid = self.node_pid()
        try:
            new = reloading.validate(path)
        except ConfigError as exc:
            problems = exc.problems or [str(exc)]
            audit_id = self.store.record_audit(
                AuditEntry(
                    AuditEvent.CONFIG_RELOAD,
                    actor,
                    action="reload",
                    target=source,
                    outcome="refused",
                    detail={"problems": problems},
                )
            )
            return ReloadResult(
                applied=False,
                node_running=pid is not None,
                node_pid=pid,
                source=source,
                problems=problems,
                changed_sections=[],
                restart_needed=[],
                message="refused: the configuration in force stays",
                audit_id=audit_id,
            )
        if pid is None:
            changed = reloading.changed_sections(self.settings, new)
            return ReloadResult(
                applied=False,
                node_running=False,
                node_pid=None,
                source=source,
                problems=[],
                changed_sections=changed,
                restart_needed=[],
                message="no node is running on this data directory; the file is valid and "
                "applies when the node starts",
                audit_id=None,
            )
        last = self.store.last_audit_id()
        reloading.write_request(self.settings, actor)
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + wait
        while True:
            rows = self.store.audit_records(
                after_id=last, event=str(AuditEvent.CONFIG_RELOAD), oldest_first=True
            )
            mine = [r for r in rows if r.entry.actor == actor]
            if mine:
                return self._reload_result(mine[0], pid, source)
            if time.monotonic() > deadline:
                raise DicomNodeError(
                    f"the node (pid {pid}) did not confirm the reload within {wait:g} s; "
                    "see its log"
                )
            time.sleep(0.05)

    @staticmethod
    def _reload_result(record: AuditRecord, pid: int, source: str) -> ReloadResult:
        detail = record.entry.detail
        applied = record.entry.outcome == "success"

        def names(key: str) -> list[str]:
            value = detail.get(key)
            return [str(v) for v in value] if isinstance(value, list) else []

        restart = names("restart_needed")
        if applied:
            message = "applied: new rules and destinations apply to studies routed from now on"
            if restart:
                message += f"; {', '.join(restart)} changed and need a restart"
        else:
            message = "refused by the node: the configuration in force stays"
        return ReloadResult(
            applied=applied,
            node_running=True,
            node_pid=pid,
            source=source,
            problems=names("problems"),
            changed_sections=names("changed"),
            restart_needed=restart,
            message=message,
            audit_id=record.id,
        )


@contextmanager
def opened(config_path: str | Path) -> Iterator[Admin]:
    """:meth:`Admin.open` as a context manager that closes the store."""
    admin = Admin.open(config_path)
    try:
        yield admin
    finally:
        admin.close()
