"""Prometheus metrics of a running node: one registry, explicit owners.

What is measured, and where
---------------------------
Each stage gets the small object of its own (:class:`IngressMetrics`,
:class:`RunMetrics`, :class:`ExportMetrics`) from the wiring and calls it
where something happens; a stage built without one measures nothing. What
already lives in durable state is read at scrape time instead of counted:
jobs per kind and state from the job store, free space on the spool's disk,
and the drift check's latest verdict (:class:`NodeCollector`).

No metric carries patient data: labels are calling AE titles (of allowed
senders, escaped as in the log), DIMSE status codes, pipeline, stage,
destination and descriptor names, HL7 ACK codes and job states.

Processes
---------
The counters must be right whatever process does the work. The node's
processes are:

* **the main process**: the listener (with ``ingress.processes: 1``, the
  default), assembly, routing, the runner's loop (which records every run's
  outcome, with the worker's per-step timings), export, drift checks. Its
  metrics are plain in-memory values in :attr:`NodeMetrics.registry`.
* **pipeline workers** (``runner.workers``) measure nothing themselves: the
  runner records the run's duration and the worker's timings from the
  outcome the worker sends back, in the main process. So no value is lost
  when a worker is killed for a timeout or replaced after a crash.
* **receiving processes** (``ingress.processes > 1``) count what only they
  see (instances, bytes, associations, C-STORE statuses). For them the node
  uses prometheus_client's multiprocess mode, and only for them: the main
  process sets ``PROMETHEUS_MULTIPROC_DIR`` (``<data_dir>/run/metrics``,
  emptied at each start) before it starts them, each writes its values to
  memory-mapped files there, and the main process, whose own values stay in
  memory (prometheus_client picks the value class when it is imported, which
  the main process did before), adds a
  :class:`~prometheus_client.multiprocess.MultiProcessCollector` over that
  directory in place of its own ingress metrics. A receiving process that
  dies keeps its counts (the files stay); its live gauge of open
  associations is dropped (:func:`forget_process`).

The alternative, counting everything from the job store at scrape time, was
rejected for what the store does not hold (refused associations, C-STORE
statuses other than success) and because retention deletes rows, which would
make counters go down.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from dicomnode.errors import JobStoreError

__all__ = [
    "MULTIPROCESS_ENV",
    "ExportMetrics",
    "IngressMetrics",
    "NodeCollector",
    "NodeMetrics",
    "RunMetrics",
    "exposition",
    "forget_process",
    "prepare_multiprocess_dir",
]

#: The environment variable prometheus_client's multiprocess mode reads.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Buckets of run and step durations, in seconds (a second to an hour).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class IngressMetrics:
    """What the listener counts.

    Parameters
    ----------
    registry : CollectorRegistry or None
        Where the metrics are registered; ``None`` in a receiving process
        (multiprocess mode: the values go to files the main process reads).
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.instances = Counter(
            "dicomnode_instances_received",
            "Instances answered Success (an identical resend included), per calling AE title.",
            ["calling_ae"],
            registry=registry,
        )
        self.bytes = Counter(
            "dicomnode_bytes_received",
            "Dataset bytes of the instances answered Success, per calling AE title.",
            ["calling_ae"],
            registry=registry,
        )
        self.c_store = Counter(
            "dicomnode_c_store_responses",
            "C-STORE responses sent, per DIMSE status (hex).",
            ["status"],
            registry=registry,
        )
        self.refused = Counter(
            "dicomnode_associations_refused",
            "Associations rejected, per reason.",
            ["reason"],
            registry=registry,
        )
        self.accepted = Counter(
            "dicomnode_associations_accepted",
            "Associations established.",
            registry=registry,
        )
        self.active = Gauge(
            "dicomnode_associations_active",
            "Associations open now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._open: set[int] = set()
        self._lock = threading.Lock()

    def stored(self, calling_ae: str, size: int) -> None:
        """One instance of ``size`` dataset bytes stored from ``calling_ae``."""
        self.instances.labels(calling_ae).inc()
        self.bytes.labels(calling_ae).inc(size)

    def responded(self, status: int) -> None:
        """A C-STORE answered with ``status``."""
        self.c_store.labels(f"0x{status:04X}").inc()

    def refuse(self, reason: str) -> None:
        """An association rejected for ``reason``."""
        self.refused.labels(reason).inc()

    def opened(self, key: int) -> None:
        """Association ``key`` (any id unique while it is open) was established."""
        with self._lock:
            if key in self._open:
                return
            self._open.add(key)
        self.accepted.inc()
        self.active.inc()

    def closed(self, key: int) -> None:
        """Association ``key`` ended (released or aborted); an unknown key is ignored."""
        with self._lock:
            if key not in self._open:
                return
            self._open.discard(key)
        self.active.dec()


class RunMetrics:
    """What the runner records of each finished run."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Histogram(
            "dicomnode_run_seconds",
            "Pipeline runs: seconds from dispatch to outcome, per pipeline and outcome.",
            ["pipeline", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.steps = Histogram(
            "dicomnode_run_step_seconds",
            "Seconds per step of a successful run (load, pipeline, save, write), per pipeline.",
            ["pipeline", "step"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def finished(
        self, pipeline: str, outcome: str, seconds: float, steps: Mapping[str, float]
    ) -> None:
        """A run of ``pipeline`` ended (``outcome``: ok, retry or dead) after
        ``seconds``; ``steps`` are the worker's timings (``load_s`` and so on)."""
        self.runs.labels(pipeline, outcome).observe(seconds)
        for step, value in steps.items():
            self.steps.labels(pipeline, step.removesuffix("_s")).observe(value)


class ExportMetrics:
    """What the dispatcher counts per destination."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "dicomnode_export_attempts",
            "Delivery attempts (one per run and destination each time), per destination.",
            ["destination"],
            registry=registry,
        )
        self.failures = Counter(
            "dicomnode_export_failures",
            "Delivery attempts that left an item to retry or DEAD, per destination.",
            ["destination"],
            registry=registry,
        )
        self.items = Counter(
            "dicomnode_export_items",
            "Outbox items settled by an attempt, per destination and outcome.",
            ["destination", "outcome"],
            registry=registry,
        )
        self.acks = Counter(
            "dicomnode_hl7_acks",
            "HL7 ACKs received, per destination and MSA-1 code.",
            ["destination", "code"],
            registry=registry,
        )

    def attempted(self, destination: str, delivered: int, retry: int, dead: int) -> None:
        """One delivery attempt to ``destination`` and its items' outcomes."""
        self.attempts.labels(destination).inc()
        if retry or dead:
            self.failures.labels(destination).inc()
        for outcome, count in (("delivered", delivered), ("retry", retry), ("dead", dead)):
            if count:
                self.items.labels(destination, outcome).inc(count)

    def ack(self, destination: str, code: str) -> None:
        """An HL7 ACK with MSA-1 ``code`` (``""``: none) came from ``destination``."""
        self.acks.labels(destination, code or "none").inc()


class StateCounter(Protocol):
    """The job store verb the queue-depth gauge reads."""

    def state_counts(self) -> dict[tuple[str, str], int]: ...


class DriftSource(Protocol):
    """What the drift gauge reads: per pipeline, the descriptors that moved at
    the latest check."""

    def moved(self) -> dict[str, tuple[str, ...]]: ...


class NodeCollector(Collector):
    """Gauges read at scrape time from the node's durable state.

    Parameters
    ----------
    store : StateCounter, optional
        Jobs per kind and state (``dicomnode_jobs``).
    free_bytes : callable, optional
        Free bytes on the spool's disk (``dicomnode_spool_free_bytes``).
    drift : callable, optional
        Returns the drift source, or ``None`` while drift checks are off
        (``dicomnode_drift_moved``).
    workers : callable, optional
        Returns the local runner's workers per state (``warm``, ``warming``),
        or ``None`` when this node runs no workers (``dicomnode_runner_workers``).
    """

    def __init__(
        self,
        store: StateCounter | None = None,
        free_bytes: Callable[[], int] | None = None,
        drift: Callable[[], DriftSource | None] | None = None,
        workers: Callable[[], Mapping[str, int] | None] | None = None,
    ) -> None:
        self.store = store
        self.free_bytes = free_bytes
        self.drift = drift
        self.workers = workers

    def collect(self) -> Iterable[Metric]:
        """The gauges; one whose source cannot be read now is left out."""
        if self.store is not None:
            jobs = GaugeMetricFamily(
                "dicomnode_jobs",
                "Jobs in the job store, per kind and state.",
                labels=["kind", "state"],
            )
            try:
                counts = self.store.state_counts()
            except JobStoreError:
                counts = None
            if counts is not None:
                for (kind, state), count in sorted(counts.items()):
                    jobs.add_metric([kind, state], count)
                yield jobs
        if self.free_bytes is not None:
            try:
                free = self.free_bytes()
            except OSError:
                free = None
            if free is not None:
                yield GaugeMetricFamily(
                    "dicomnode_spool_free_bytes", "Free bytes on the spool's disk.", value=free
                )
        states = self.workers() if self.workers is not None else None
        if states is not None:
            workers = GaugeMetricFamily(
                "dicomnode_runner_workers",
                "The local runner's worker processes, per state: warm (pipelines loaded, "
                "result writer warmed up) or warming (a run given to it waits for that).",
                labels=["state"],
            )
            for state, count in sorted(states.items()):
                workers.add_metric([state], count)
            yield workers
        source = self.drift() if self.drift is not None else None
        if source is not None:
            moved = GaugeMetricFamily(
                "dicomnode_drift_moved",
                "1 for each descriptor that moved at the latest drift check, per pipeline.",
                labels=["pipeline", "descriptor"],
            )
            checked = GaugeMetricFamily(
                "dicomnode_drift_moved_descriptors",
                "How many descriptors moved at the latest drift check, per pipeline.",
                labels=["pipeline"],
            )
            for pipeline, descriptors in sorted(source.moved().items()):
                checked.add_metric([pipeline], len(descriptors))
                for descriptor in descriptors:
                    moved.add_metric([pipeline, descriptor], 1)
            yield checked
            yield moved


class NodeMetrics:
    """The node's one registry and the stages' metrics in it.

    Parameters
    ----------
    multiprocess_dir : Path, optional
        Where receiving processes write their values (``ingress.processes >
        1``): the ingress metrics then come from there, and :attr:`ingress`
        is ``None`` (the main process receives nothing).
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is None:
            self.ingress: IngressMetrics | None = IngressMetrics(self.registry)
        else:
            self.ingress = None
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
        self.runs = RunMetrics(self.registry)
        self.export = ExportMetrics(self.registry)

    def watch(self, collector: Collector) -> None:
        """Add a scrape-time collector (e.g. :class:`NodeCollector`)."""
        self.registry.register(collector)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """See :func:`exposition`."""
        return exposition(self.registry, accept)


def exposition(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The registry's samples in the text format a scraper asked for.

    Parameters
    ----------
    registry : CollectorRegistry
        What to expose (:attr:`NodeMetrics.registry`).
    accept : str, optional
        The request's ``Accept`` header: OpenMetrics when it asks for it,
        else the Prometheus text format 0.0.4.

    Returns
    -------
    tuple of (bytes, str)
        The body and its ``Content-Type``.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def prepare_multiprocess_dir(path: Path) -> Path:
    """Empty (or create) ``path`` for the receiving processes' values: counts
    restart at each start of the node, as a single process's do."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def forget_process(path: Path, pid: int) -> None:
    """Drop the live gauges of receiving process ``pid`` (it ended); its
    counters stay in the totals."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
