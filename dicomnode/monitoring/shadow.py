"""Shadow mode: how far a candidate pipeline agrees with the production one.

A rule with ``shadow: {pipeline: ...}`` gives every study it matches a second
run, the candidate's, on the same series; the candidate's results are kept
(``<spool>/outbox/shadow/job-<id>``, the run marked shadow in the job store)
and never delivered. Once both runs have results, :func:`compare_results`
compares them and the store keeps the agreement (schema version 6), per rule
and (production, candidate) pair:

- per structure (segments matched by their type code): the Dice coefficient
  of the candidate's mask against the production one (MONAI's
  ``DiceMetric``; two empty masks agree, 1.0) and both voxel counts;
- per finding (matched by concept): both probabilities, their difference
  (candidate minus production) and whether the two calls (probability at or
  above the finding's threshold) agree.

:func:`summarize` aggregates what the store holds for ``dicomnode shadow
report``. Comparing only reads results: it never changes or holds up one.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from apscheduler.schedulers.background import BackgroundScheduler
from numpy.typing import NDArray

from dicomnode.errors import JobStoreError
from dicomnode.jobs.ports import ShadowSource
from dicomnode.monitoring.metrics import dice
from dicomnode.protocol import PipelineResult
from dicomnode.resultfile import load_result
from dicomnode.scheduling import every

__all__ = [
    "PairSummary",
    "ShadowMonitor",
    "ShadowSource",
    "compare_results",
    "summarize",
]

LOGGER = logging.getLogger(__name__)


def _key(scheme: str, value: str) -> str:
    return f"{scheme}:{value}"


def compare_results(production: PipelineResult, candidate: PipelineResult) -> dict[str, Any]:
    """The agreement of two results of the same input series.

    Parameters
    ----------
    production, candidate : PipelineResult
        The production pipeline's and the candidate's results.

    Returns
    -------
    dict
        ``{"structures": {name: {"dice", "production_voxels",
        "candidate_voxels"}}, "findings": {meaning: {"production",
        "candidate", "difference", "agree"}}}``. A structure only one result
        has gets Dice 0.0 (``None`` voxels for the side that lacks it); label
        maps of different grids give Dice ``None``. ``agree`` is ``None`` when
        neither finding has a threshold.
    """
    structures: dict[str, dict[str, Any]] = {}
    theirs = {_key(s.type.scheme, s.type.value): s for s in candidate.segments}
    ours = {_key(s.type.scheme, s.type.value): s for s in production.segments}
    grids_match = (
        production.label_map is not None
        and candidate.label_map is not None
        and production.label_map.shape == candidate.label_map.shape
    )
    for key in [*ours, *(k for k in theirs if k not in ours)]:
        mine, other = ours.get(key), theirs.get(key)
        name = (mine or other).name  # type: ignore[union-attr]
        entry: dict[str, Any] = {"dice": None, "production_voxels": None, "candidate_voxels": None}
        a = _mask(production.label_map, mine.label) if mine is not None else None
        b = _mask(candidate.label_map, other.label) if other is not None else None
        if a is not None:
            entry["production_voxels"] = int(a.sum())
        if b is not None:
            entry["candidate_voxels"] = int(b.sum())
        if a is None or b is None:
            entry["dice"] = 0.0
        elif grids_match:
            entry["dice"] = dice(b, a)
        structures[name] = entry
    findings: dict[str, dict[str, Any]] = {}
    other_findings = {_key(f.concept.scheme, f.concept.value): f for f in candidate.findings}
    for finding in production.findings:
        match = other_findings.get(_key(finding.concept.scheme, finding.concept.value))
        thresholds = finding.threshold is not None or (
            match is not None and match.threshold is not None
        )
        findings[finding.concept.meaning] = {
            "production": finding.probability,
            "candidate": None if match is None else match.probability,
            "difference": None if match is None else match.probability - finding.probability,
            "agree": (
                None if not thresholds else match is not None and match.positive == finding.positive
            ),
        }
    return {"structures": structures, "findings": findings}


def _mask(label_map: NDArray[np.uint8] | None, label: int) -> NDArray[np.bool_] | None:
    return None if label_map is None else np.asarray(label_map == label)


def compare_runs(production_dir: Path, candidate_dir: Path) -> dict[str, Any]:
    """:func:`compare_results` of two saved results (``result.json`` folders)."""
    production, _ = load_result(production_dir)
    candidate, _ = load_result(candidate_dir)
    return compare_results(production, candidate)


@dataclass(frozen=True)
class PairSummary:
    """What the store holds about one rule's production/candidate pair.

    Attributes
    ----------
    rule, production, candidate : str
    studies : int
        Studies both pipelines have results for.
    structures : dict
        Per structure: ``mean_dice``, ``min_dice``, ``max_dice``, ``n``.
    findings : dict
        Per finding: ``agreement`` (share of studies where the calls agree),
        ``mean_difference`` and ``mean_abs_difference`` of the
        probabilities (candidate minus production), ``n``.
    last_at : float
        When the latest comparison was recorded.
    """

    rule: str
    production: str
    candidate: str
    studies: int
    structures: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    findings: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    last_at: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return asdict(self)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict[str, object]]) -> list[PairSummary]:
    """Aggregate recorded agreements (the store's ``agreements()``) per rule
    and pipeline pair, in order of first appearance.

    Parameters
    ----------
    rows : list of dict
        ``rule``, ``production_pipeline``, ``candidate_pipeline``, ``at`` and
        ``json`` (a :func:`compare_results` document) each.

    Returns
    -------
    list of PairSummary
    """
    grouped: dict[tuple[str, str, str], list[dict[str, object]]] = {}
    for row in rows:
        key = (str(row["rule"]), str(row["production_pipeline"]), str(row["candidate_pipeline"]))
        grouped.setdefault(key, []).append(row)
    summaries = []
    for (rule, production, candidate), members in grouped.items():
        dices: dict[str, list[float]] = {}
        probability: dict[str, tuple[list[float], list[bool]]] = {}
        for row in members:
            document = json.loads(str(row["json"]))
            for name, entry in document.get("structures", {}).items():
                values = dices.setdefault(name, [])
                if entry.get("dice") is not None:
                    values.append(float(entry["dice"]))
            for name, entry in document.get("findings", {}).items():
                differences, agreements = probability.setdefault(name, ([], []))
                if entry.get("difference") is not None:
                    differences.append(float(entry["difference"]))
                if entry.get("agree") is not None:
                    agreements.append(bool(entry["agree"]))
        structures: dict[str, dict[str, float | int | None]] = {
            name: {
                "mean_dice": _mean(values),
                "min_dice": min(values) if values else None,
                "max_dice": max(values) if values else None,
                "n": len(values),
            }
            for name, values in dices.items()
        }
        findings: dict[str, dict[str, float | int | None]] = {
            name: {
                "agreement": _mean([float(a) for a in agreements]),
                "mean_difference": _mean(differences),
                "mean_abs_difference": _mean([abs(d) for d in differences]),
                "n": max(len(differences), len(agreements)),
            }
            for name, (differences, agreements) in probability.items()
        }
        summaries.append(
            PairSummary(
                rule=rule,
                production=production,
                candidate=candidate,
                studies=len(members),
                structures=structures,
                findings=findings,
                last_at=max(float(str(row["at"])) for row in members),
            )
        )
    return summaries


class ShadowMonitor:
    """Compares every shadow run with its production run once both have
    results, every ``poll_seconds``.

    Parameters
    ----------
    store : ShadowSource
        The job store.
    poll_seconds : float
        Between two passes.
    """

    JOB_ID = "dicomnode-shadow"

    def __init__(self, store: ShadowSource, poll_seconds: float) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self._scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()
        self._failed: set[int] = set()

    def start(self) -> None:
        """Compare now, then every ``poll_seconds``."""
        self._scheduler = every(self.poll_seconds, self.run_once, self.JOB_ID)

    def stop(self) -> None:
        """Stop comparing (waits for a pass in progress)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def run_once(self, compare: Callable[[Path, Path], dict[str, Any]] = compare_runs) -> int:
        """Compare every pair that is ready; return how many were recorded.

        A pair whose results cannot be read is logged once and skipped (it
        is tried again at the next start).
        """
        done = 0
        with self._lock:
            try:
                pairs = self.store.shadow_pairs()
            except JobStoreError as exc:
                LOGGER.warning("shadow comparison skipped: %s", exc)
                return 0
            for production, shadow in pairs:
                if shadow.id in self._failed:
                    continue
                assert production.result_dir is not None and shadow.result_dir is not None
                extra = {"study_uid": shadow.study_instance_uid, "job_id": shadow.id}
                try:
                    document = compare(Path(production.result_dir), Path(shadow.result_dir))
                    self.store.record_agreement(production, shadow, json.dumps(document))
                except (OSError, ValueError, KeyError, JobStoreError) as exc:
                    self._failed.add(shadow.id)
                    LOGGER.warning(
                        "job %d: shadow run not compared with job %d: %s",
                        shadow.id,
                        production.id,
                        exc,
                        extra=extra,
                    )
                    continue
                done += 1
                LOGGER.info(
                    "job %d: shadow %s compared with job %d (%s)",
                    shadow.id,
                    shadow.pipeline,
                    production.id,
                    production.pipeline,
                    extra=extra,
                )
        return done
