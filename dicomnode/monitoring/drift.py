"""Drift checks: does what a pipeline sees and says still look like its reference runs?

Per pipeline, the descriptors of a recent window of runs (the last
``monitoring.recent_runs`` runs, or those of the last ``recent_days`` days) are
compared with those of a reference window (the first ``reference_runs`` runs,
or those between ``reference_from`` and ``reference_to``):

- a numeric descriptor (kVp, slice thickness, pixel spacing, intensity mean
  and spread, segment volumes, finding probabilities) by its population
  stability index (over ten bins cut at the reference's deciles, or over its
  values when it has few) and by a
  two-sample Kolmogorov-Smirnov test; it has moved when the PSI is above
  ``psi_threshold`` *and* the KS p-value below ``ks_p_threshold`` (either alone
  is too easily moved by chance in windows of a few dozen runs);
- a categorical one (manufacturer, model, kernel) by its PSI over categories;
- the CT intensity histogram by the PSI of the windows' mean histograms.

A descriptor that moved is logged as a WARNING naming the pipeline, the
descriptor and its PSI / p-value (never patient data), and POSTed as JSON to
``monitoring.webhook_url`` when one is set. A check only reads the job store:
it never changes a result or holds up a delivery.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from apscheduler.schedulers.background import BackgroundScheduler
from scipy.stats import ks_2samp

from dicomnode.config.monitoring import MonitoringConfig
from dicomnode.errors import JobStoreError
from dicomnode.jobs.ports import DescriptorSource
from dicomnode.monitoring.descriptors import CATEGORICAL
from dicomnode.scheduling import every

__all__ = [
    "Comparison",
    "DescriptorSource",
    "DriftMonitor",
    "PipelineDrift",
    "category_psi",
    "check_pipeline",
    "ks_p_value",
    "numeric_psi",
    "psi",
]

LOGGER = logging.getLogger(__name__)

PSI_FLOOR = 1e-4
"""Smallest share a bin counts with, so an empty bin gives a finite PSI."""

HISTOGRAM = "intensity_histogram"
"""The name the CT intensity histogram is compared under."""

_ABSENT = "(absent)"


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two distributions over the same bins.

    ``sum((a - e) * ln(a / e))`` over the bins, each share normalised and
    floored at :data:`PSI_FLOOR`.

    Parameters
    ----------
    expected, actual : sequence of float
        Counts or shares per bin, reference first.

    Returns
    -------
    float
        0 for identical distributions; above 0.2 is usually read as a shift.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs two non-empty distributions over the same bins")
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


DISCRETE_VALUES = 10
"""A numeric descriptor with at most this many distinct reference values
(slice thickness, kVp) is binned by value, not by deciles."""


def numeric_psi(reference: Sequence[float], recent: Sequence[float]) -> float:
    """PSI of a numeric descriptor.

    When the reference has at most :data:`DISCRETE_VALUES` distinct values the
    bins are those values and one for any other value; otherwise they are cut
    at the reference's nine inner deciles (ten bins, the outer two open).

    Parameters
    ----------
    reference, recent : sequence of float
        The descriptor's values in each window.

    Returns
    -------
    float
    """
    ref = np.asarray(reference, dtype=np.float64)
    new = np.asarray(recent, dtype=np.float64)
    values = np.unique(ref)
    if len(values) <= DISCRETE_VALUES:
        other = len(values)

        def index(x: np.ndarray[Any, np.dtype[np.float64]]) -> Any:
            at = np.searchsorted(values, x)
            found = (at < len(values)) & (values[np.minimum(at, other - 1)] == x)
            return np.where(found, at, other)

        bins = other + 1
    else:
        edges = np.quantile(ref, np.linspace(0.1, 0.9, 9))

        def index(x: np.ndarray[Any, np.dtype[np.float64]]) -> Any:
            return np.searchsorted(edges, x, side="right")

        bins = len(edges) + 1
    expected = np.bincount(index(ref), minlength=bins)
    actual = np.bincount(index(new), minlength=bins)
    return psi(expected.tolist(), actual.tolist())


def category_psi(reference: Iterable[str], recent: Iterable[str]) -> float:
    """PSI of a categorical descriptor over the categories either window has.

    Parameters
    ----------
    reference, recent : iterable of str

    Returns
    -------
    float
    """
    ref, new = Counter(reference), Counter(recent)
    categories = sorted(set(ref) | set(new))
    return psi([ref[c] for c in categories], [new[c] for c in categories])


def ks_p_value(reference: Sequence[float], recent: Sequence[float]) -> float:
    """The two-sample Kolmogorov-Smirnov test's p-value (``scipy.stats.ks_2samp``)."""
    return float(ks_2samp(reference, recent).pvalue)


@dataclass(frozen=True)
class Comparison:
    """One descriptor compared between the two windows.

    Attributes
    ----------
    descriptor : str
        E.g. ``input.SliceThickness``, ``output.volume_ml.lung``.
    kind : str
        ``numeric``, ``categorical`` or ``histogram``.
    psi : float
    p_value : float or None
        The KS test's, for numeric descriptors.
    drifted : bool
    """

    descriptor: str
    kind: str
    psi: float
    p_value: float | None
    drifted: bool


@dataclass(frozen=True)
class PipelineDrift:
    """A pipeline's latest comparison.

    Attributes
    ----------
    pipeline : str
    reference_runs, recent_runs : int
        Runs in each window.
    compared : bool
        False when a window has fewer than ``min_runs`` runs.
    comparisons : tuple of Comparison
    """

    pipeline: str
    reference_runs: int
    recent_runs: int
    compared: bool
    comparisons: tuple[Comparison, ...] = field(default=())

    @property
    def drifted(self) -> tuple[Comparison, ...]:
        """The descriptors that moved."""
        return tuple(c for c in self.comparisons if c.drifted)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return asdict(self)


def _windows(
    store: DescriptorSource, pipeline: str, config: MonitoringConfig, now: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if config.reference_from is not None and config.reference_to is not None:
        reference = store.descriptors(
            pipeline,
            since=config.reference_from.timestamp(),
            until=config.reference_to.timestamp(),
        )
    else:
        reference = store.descriptors(pipeline, first=config.reference_runs)
    taken = {row[0] for row in reference}
    window = config.recent_window_runs
    if window is not None:
        # the last runs that are not reference runs
        recent = store.descriptors(pipeline, last=window + len(taken))
        recent = [row for row in recent if row[0] not in taken][-window:]
    else:
        assert config.recent_days is not None
        recent = store.descriptors(pipeline, since=now - config.recent_days * 86400.0)
        recent = [row for row in recent if row[0] not in taken]
    return [_parse(r[3]) for r in reference], [_parse(r[3]) for r in recent]


def _parse(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _flatten(document: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for part in ("input", "output"):
        values = document.get(part)
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{part}.{key}"] = value
    return flat


def _numbers(rows: list[dict[str, Any]], key: str) -> list[float]:
    found = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found.append(float(value))
    return found


def compare(
    pipeline: str,
    reference: list[dict[str, Any]],
    recent: list[dict[str, Any]],
    config: MonitoringConfig,
) -> PipelineDrift:
    """Compare two windows of descriptor documents.

    Parameters
    ----------
    pipeline : str
    reference, recent : list of dict
        Descriptor documents (``{"input": ..., "output": ...}``).
    config : MonitoringConfig
        Thresholds and ``min_runs``.

    Returns
    -------
    PipelineDrift
    """
    if len(reference) < config.min_runs or len(recent) < config.min_runs:
        return PipelineDrift(pipeline, len(reference), len(recent), compared=False)
    ref = [_flatten(d) for d in reference]
    new = [_flatten(d) for d in recent]
    keys = sorted({k for row in ref for k in row} | {k for row in new for k in row})
    categorical = {f"input.{k}" for k in CATEGORICAL}
    comparisons: list[Comparison] = []
    for key in keys:
        if key in categorical:
            value = category_psi(
                (str(r.get(key, _ABSENT)) for r in ref), (str(r.get(key, _ABSENT)) for r in new)
            )
            comparisons.append(
                Comparison(key, "categorical", value, None, value > config.psi_threshold)
            )
        elif key == "input.histogram":
            shares = [
                [np.asarray(r[key], dtype=np.float64) for r in rows if isinstance(r.get(key), list)]
                for rows in (ref, new)
            ]
            if (
                len(shares[0]) >= config.min_runs
                and len(shares[1]) >= config.min_runs
                and len({s.shape for s in shares[0] + shares[1]}) == 1
            ):
                mean_ref = np.mean(shares[0], axis=0)
                mean_new = np.mean(shares[1], axis=0)
                value = psi(mean_ref.tolist(), mean_new.tolist())
                comparisons.append(
                    Comparison(
                        f"input.{HISTOGRAM}", "histogram", value, None, value > config.psi_threshold
                    )
                )
        else:
            a, b = _numbers(ref, key), _numbers(new, key)
            if len(a) < config.min_runs or len(b) < config.min_runs:
                continue
            value = numeric_psi(a, b)
            p_value = ks_p_value(a, b)
            moved = value > config.psi_threshold and p_value < config.ks_p_threshold
            comparisons.append(Comparison(key, "numeric", value, p_value, moved))
    return PipelineDrift(pipeline, len(reference), len(recent), True, tuple(comparisons))


def check_pipeline(
    store: DescriptorSource, pipeline: str, config: MonitoringConfig, now: float
) -> PipelineDrift:
    """The latest comparison of ``pipeline``'s windows, read from the store.

    Parameters
    ----------
    store : DescriptorSource
        The job store.
    pipeline : str
    config : MonitoringConfig
    now : float
        Seconds since the epoch (the end of a ``recent_days`` window).

    Returns
    -------
    PipelineDrift
    """
    reference, recent = _windows(store, pipeline, config, now)
    return compare(pipeline, reference, recent, config)


def _describe(comparison: Comparison) -> str:
    text = f"PSI {comparison.psi:.3f}"
    if comparison.p_value is not None:
        text += f", KS p-value {comparison.p_value:.2g}"
    return text


class DriftMonitor:
    """Runs a drift check of every pipeline every ``check_seconds`` and alerts.

    Parameters
    ----------
    config : MonitoringConfig
    store : DescriptorSource
        The job store.
    clock : callable
        Seconds since the epoch.
    """

    def __init__(
        self, config: MonitoringConfig, store: DescriptorSource, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.latest: dict[str, PipelineDrift] = {}
        self._scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Check now and then every ``check_seconds``."""
        self._scheduler = every(self.config.check_seconds, self.check, "drift-check")

    def stop(self) -> None:
        """Stop checking (waits for a check in progress)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def check(self) -> list[PipelineDrift]:
        """One pass: compare every pipeline's windows, alert on what moved.

        Returns
        -------
        list of PipelineDrift
            One per pipeline with descriptors; empty when the store could not
            be read (logged).
        """
        with self._lock:
            try:
                pipelines = self.store.descriptor_pipelines()
                reports = [
                    check_pipeline(self.store, p, self.config, self.clock()) for p in pipelines
                ]
            except JobStoreError as exc:
                LOGGER.warning("drift check skipped: %s", exc)
                return []
            for report in reports:
                self.latest[report.pipeline] = report
                if report.drifted:
                    self._alert(report)
            return reports

    def moved(self) -> dict[str, tuple[str, ...]]:
        """Per pipeline, the descriptors that moved at its latest check (for
        the metrics; empty tuples for pipelines that did not drift)."""
        latest = dict(self.latest)
        return {name: tuple(c.descriptor for c in r.drifted) for name, r in latest.items()}

    def _alert(self, report: PipelineDrift) -> None:
        for moved in report.drifted:
            LOGGER.warning(
                "drift: pipeline %s, %s moved (%s; %d reference runs, %d recent runs)",
                report.pipeline,
                moved.descriptor,
                _describe(moved),
                report.reference_runs,
                report.recent_runs,
            )
        if self.config.webhook_url is not None:
            post_alert(self.config.webhook_url, report, self.config.webhook_timeout_seconds)


def post_alert(url: str, report: PipelineDrift, timeout: float) -> bool:
    """POST a drift alert as JSON; a failure is logged, never raised.

    The body is ``{"event": "drift", "pipeline", "reference_runs",
    "recent_runs", "drifted": [{"descriptor", "kind", "psi", "p_value"}]}``.

    Returns
    -------
    bool
        Whether the server answered with a 2xx status.
    """
    body = {
        "event": "drift",
        "pipeline": report.pipeline,
        "reference_runs": report.reference_runs,
        "recent_runs": report.recent_runs,
        "drifted": [
            {"descriptor": c.descriptor, "kind": c.kind, "psi": c.psi, "p_value": c.p_value}
            for c in report.drifted
        ],
    }
    request = urllib.request.Request(  # noqa: S310 - http(s) only, checked by the config
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = int(response.status)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        LOGGER.warning("drift alert for %s not delivered to the webhook: %s", report.pipeline, exc)
        return False
    if not 200 <= status < 300:
        LOGGER.warning("drift alert webhook answered %d", status)
        return False
    return True
