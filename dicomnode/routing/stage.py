"""The routing stage: COMPLETE rounds → ROUTED (one run per matching rule) or DISCARDED.

The rule engine (:func:`dicomnode.routing.route`) is a pure function; this
module is the one place where its decisions are recorded in the job store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from dicomnode.config.rules import RoutingConfig
from dicomnode.errors import IllegalTransitionError
from dicomnode.jobs.models import InstanceRecord, Job, RunSpec
from dicomnode.jobs.ports import RoutingStore
from dicomnode.jobs.states import JobState
from dicomnode.routing import completion_for, describe_study, route
from dicomnode.routing.corrections import SEGMENTATION_STORAGE, find_correction
from dicomnode.scheduling import Loop, Wakeup

LOGGER = logging.getLogger(__name__)


class Router:
    """Routes every COMPLETE study round, each exactly once.

    Parameters
    ----------
    config : RoutingConfig
        The rules.
    store : RoutingStore
        The job store.
    poll_seconds : float
        How often COMPLETE rounds are looked for when nothing signals one
        (see :attr:`wakeup`).
    """

    JOB_ID = "dicomnode-router"

    def __init__(self, config: RoutingConfig, store: RoutingStore, poll_seconds: float) -> None:
        self.config = config
        self.store = store
        self.poll_seconds = poll_seconds
        self._loop = Loop(self.JOB_ID, self._pass, poll_seconds, self._failed)

    @property
    def wakeup(self) -> Wakeup:
        """Set it when a round became COMPLETE (the wiring does, on the job
        store's commits): routing starts at once, not at the next poll."""
        return self._loop.wakeup

    def _failed(self, exc: Exception) -> None:
        LOGGER.error("routing: pass failed, retrying at the next poll", exc_info=exc)

    def _pass(self) -> None:
        self.run_once()

    def corrections(self, job: Job, records: list[InstanceRecord]) -> set[str]:
        """Record the round's SEGs that correct a SEG the node wrote (see
        :mod:`dicomnode.routing.corrections`); return their SOP Instance UIDs,
        which are kept out of routing."""
        found: set[str] = set()
        for record in records:
            if record.sop_class_uid != SEGMENTATION_STORAGE:
                continue
            correction = find_correction(Path(record.path), self.store.written_segmentations)
            if correction is None:
                continue
            found.add(record.sop_instance_uid)
            new = self.store.record_correction(
                sop_instance_uid=record.sop_instance_uid,
                series_instance_uid=record.series_instance_uid,
                study_instance_uid=record.study_instance_uid,
                path=record.path,
                round_job_id=job.id,
                job_id=correction.job_id,
                pipeline=correction.pipeline,
                seg_sop_instance_uid=correction.seg_sop_instance_uid,
                seg_path=correction.seg_path,
                matched_by=correction.matched_by,
            )
            if new:
                LOGGER.info(
                    "job %d: a corrected SEG of job %d's result arrived (matched by %s); "
                    "kept for scoring, not routed",
                    job.id,
                    correction.job_id,
                    correction.matched_by,
                    extra={"study_uid": job.study_instance_uid, "job_id": job.id},
                )
        return found

    def route_round(self, job: Job) -> list[int]:
        """Route one COMPLETE round; return the run job ids it created.

        Received SEGs that correct one the node wrote are recorded as
        corrections and left out: they never reach a pipeline."""
        records = self.store.instances_of(job.id)
        corrected = self.corrections(job, records)
        kept = [r for r in records if r.sop_instance_uid not in corrected]
        studies = [
            s
            for s in describe_study(
                [Path(r.path) for r in kept],
                job.calling_ae,
                recorded=[(r.study_instance_uid, r.series_instance_uid) for r in kept],
            )
            if s.study_instance_uid
        ]
        extra = {"study_uid": job.study_instance_uid, "job_id": job.id}
        runs: list[RunSpec] = []
        reason = (
            f"{len(corrected)} corrected SEG(s) of the node's results: scored, not routed"
            if corrected
            else "no rule matched"
        )
        for study in studies:
            decision = route(study, self.config)
            runs.extend(decision.runs)
            if decision.runs:
                rules = ", ".join(
                    f"{r.rule} → {r.pipeline}{' (shadow)' if r.shadow else ''}"
                    for r in decision.runs
                )
                reason = ("fallback: " if decision.used_fallback else "matched ") + rules
        try:
            created = self.store.route(job.id, runs, reason)
        except IllegalTransitionError:
            return []  # routed by someone else meanwhile
        if created:
            LOGGER.info("job %d routed: %s", job.id, reason, extra=extra)
        else:
            LOGGER.info("job %d discarded: %s", job.id, reason, extra=extra)
        return created

    def run_once(self) -> int:
        """Route every COMPLETE round; return how many were routed."""
        done = 0
        for job in self.store.jobs(state=JobState.COMPLETE):
            if job.kind == "study" and job.held_at is None:  # a held round waits
                self.route_round(job)
                done += 1
        return done

    def start(self) -> None:
        """Route now, then when woken, at least every ``poll_seconds``."""
        self._loop.start()

    def alive(self) -> bool:
        """Whether its thread runs."""
        return self._loop.alive()

    def stop(self) -> None:
        """Stop routing, waiting for a pass in progress."""
        self._loop.stop()


class CompletionPolicy:
    """Per-study assembly timing from the rules' ``completion`` overrides.

    It reads one header per series of the round (cached until a new series
    arrives) and asks the engine which timing applies.
    """

    def __init__(
        self,
        config: RoutingConfig,
        store: RoutingStore,
        default_quiet: float,
        default_max_wait: float,
    ) -> None:
        self.config = config
        self.store = store
        self.defaults = (default_quiet, default_max_wait)
        self._cache: dict[int, tuple[frozenset[str], tuple[float, float]]] = {}

    @staticmethod
    def needed(config: RoutingConfig) -> bool:
        """Whether any rule overrides the completion timing."""
        rules = [*config.rules, *([config.fallback] if config.fallback else [])]
        return any(rule.completion is not None for rule in rules)

    def __call__(self, job: Job) -> tuple[float, float]:
        first_per_series: dict[str, str] = {}
        for record in self.store.instances_of(job.id):
            first_per_series.setdefault(record.series_instance_uid, record.path)
        key = frozenset(first_per_series)
        cached = self._cache.get(job.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        timing = self.defaults
        for study in describe_study([Path(p) for p in first_per_series.values()], job.calling_ae):
            timing = completion_for(study, self.config, *self.defaults)
        self._cache[job.id] = (key, timing)
        return timing


Policy = Callable[[Job], tuple[float, float]]
