"""Wiring: the one place that builds the stages and starts and stops them.

The embedded default is one process: the listener's threads, the assembler's
scheduler and the SQLite job store. With ``ingress.processes > 1`` the listener
runs in that many child processes sharing the port (SO_REUSEPORT); they meet
the assembler in the spool and the job store like any other stage.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from pydicom import config as pydicom_config

from dicomnode import metrics as node_metrics
from dicomnode.admin import reload as reloading
from dicomnode.assembly import Assembler
from dicomnode.config import Settings
from dicomnode.endpoints import OpsServer
from dicomnode.errors import ConfigError, DicomNodeError, StartupError
from dicomnode.export.dispatcher import Dispatcher
from dicomnode.health import Health, readiness
from dicomnode.ingress import IngressServer, StoreHandler, recover_spool
from dicomnode.ingress.server import in_use_hint
from dicomnode.jobs import JobState, SQLJobStore
from dicomnode.logs import TEXT_FORMAT, PeerNoiseFilter, formatter
from dicomnode.metrics import IngressMetrics, NodeCollector, NodeMetrics
from dicomnode.monitoring.corrections import CorrectionScorer
from dicomnode.monitoring.drift import DriftMonitor
from dicomnode.monitoring.shadow import ShadowMonitor
from dicomnode.processes import end_with_parent
from dicomnode.results.writer import DicomResultWriter
from dicomnode.routing.stage import CompletionPolicy, Router
from dicomnode.runner.stage import Runner, pipeline_options
from dicomnode.runner.worker import WorkerSettings
from dicomnode.scheduling import Wakeup
from dicomnode.spool import RetentionSweeper, Spool

if TYPE_CHECKING:  # Celery is imported only when runner.executor is celery
    from dicomnode.admin.atna import SyslogForwarder
    from dicomnode.runner.celery_worker import CeleryWorker
    from dicomnode.runner.remote import RemoteRunner
    from dicomnode.web import ConsoleServer
    from dicomnode.web.models import PipelineOut

LOGGER = logging.getLogger(__name__)

LOG_FORMAT = TEXT_FORMAT


def configure_logging(level: str, style: str = "text") -> None:
    """Console logging for ``serve`` and its receiving processes.

    ``style`` is ``logging.format``: ``text`` lines, or ``json`` (one object
    per line, :class:`~dicomnode.logs.JsonFormatter`).

    Every record is one line with control characters escaped
    (:class:`~dicomnode.logs.SafeFormatter`): a value from the wire cannot
    forge a line. Python warnings go through logging too, so they are escaped
    alike. The libraries' per-message logs (pynetdicom logs every DIMSE
    message, APScheduler every run) are kept at WARNING unless the level is
    DEBUG; outside DEBUG, pydicom does not validate what it reads (a bad value
    in a received dataset would cost a warning per element; the node checks
    what it uses itself), pynetdicom's value validators stay silent (their
    callers report the failure) and a DIMSE message pynetdicom refuses is one
    line without its traceback (:class:`~dicomnode.logs.PeerNoiseFilter`).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(style))
    debug = level == "DEBUG"
    if not debug:
        handler.addFilter(PeerNoiseFilter())
    logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)
    quiet = logging.DEBUG if debug else logging.WARNING
    for name in ("pynetdicom", "apscheduler", "uvicorn"):
        logging.getLogger(name).setLevel(quiet)
    if not debug:
        logging.getLogger("pynetdicom.utils").setLevel(logging.CRITICAL)
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


def build_spool(settings: Settings) -> Spool:
    """The spool as configured."""
    return Spool(
        settings.storage.spool_path, min_free_bytes=settings.storage.min_free_mb * 1024 * 1024
    )


def node_identity(settings: Settings) -> str:
    """The name of this node among those sharing a job store: its host and data
    directory, the same after a restart, different for every node."""
    return f"{socket.gethostname()}:{settings.storage.data_dir.resolve()}"


def build_store(settings: Settings) -> SQLJobStore:
    """The job store as configured."""
    return SQLJobStore(settings.database_url)


#: How often a receiving process checks that the main process still lives.
PARENT_CHECK_SECONDS = 0.5


def _die_with_parent(parent_pid: int) -> None:
    """End this receiving process as soon as the main process ends.

    Without the main process nothing assembles what a receiving process
    stores, and its socket keeps the port from a restart. On Linux the kernel
    sends SIGKILL when the parent ends (``PR_SET_PDEATHSIG``; the parent is the
    thread that started the process, the main thread here). Everywhere, a
    thread also checks the parent's id: it covers a parent that ended before
    ``prctl`` took effect and systems without ``prctl``. SIGKILL, like a
    ``kill -9`` of the whole node: what was acknowledged is durable, a partial
    write is removed at the next start.
    """
    end_with_parent()

    def _watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch, name="parent-watch", daemon=True).start()


def _process_start(pid: int) -> str | None:
    """The start time of a live process (``/proc/<pid>/stat``), or ``None``
    when there is no such process or it is a zombie. With the pid it names one
    process: a pid reused by another process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _run_file(settings: Settings, index: int) -> Path:
    return settings.storage.data_dir / "run" / f"ingress-{index}.pid"


def _ingress_child(settings: Settings, ready: Any, index: int, parent_pid: int) -> None:
    """Entry point of one receiving process."""
    configure_logging(settings.logging.level, settings.logging.format)
    _die_with_parent(parent_pid)
    run_file = _run_file(settings, index)
    start = _process_start(os.getpid())
    if start is not None:
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(f"{os.getpid()} {start}\n", encoding="ascii")
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        store = build_store(settings)
        server = IngressServer(
            settings.node,
            settings.ingress,
            StoreHandler(build_spool(settings), store),
            reuse_port=True,
            # multiprocess mode: the values go to files under PROMETHEUS_MULTIPROC_DIR
            metrics=IngressMetrics(None),
        )
        server.start()
    except (OSError, DicomNodeError) as exc:
        ready.put((index, f"{type(exc).__name__}: {exc}"))
        return
    ready.put((index, None))
    stop.wait()
    server.stop(settings.ingress.shutdown_grace_seconds)
    store.close()
    run_file.unlink(missing_ok=True)


def reclaim_orphans(settings: Settings, timeout: float = 10.0) -> list[int]:
    """Kill receiving processes an earlier run of the node left behind.

    Each receiving process writes ``<data_dir>/run/ingress-<n>.pid`` (its pid
    and start time). The caller holds the data directory's lock, so no live
    node owns those processes: one still running outlived its main process
    (a system without ``PR_SET_PDEATHSIG``, or one that ends only at its next
    parent check) and still holds the port. It gets SIGKILL, as its main
    process did; the spool and the job store are safe against that.

    Returns
    -------
    list of int
        The pids killed.
    """
    run_dir = settings.storage.data_dir / "run"
    if not run_dir.is_dir():
        return []
    killed: list[tuple[int, str]] = []
    for path in sorted(run_dir.glob("ingress-*.pid")):
        try:
            pid_text, start = path.read_text(encoding="ascii").split()
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, start = 0, ""
        if pid > 0 and pid != os.getpid() and _process_start(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, start))
            except ProcessLookupError:
                pass
        path.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while any(_process_start(pid) == start for pid, start in killed):
        if time.monotonic() > deadline:
            raise StartupError(
                "receiving processes of an earlier run did not end: "
                + ", ".join(str(pid) for pid, _ in killed)
            )
        time.sleep(0.02)
    if killed:
        LOGGER.warning(
            "killed %d receiving process(es) an earlier run left listening (pid %s)",
            len(killed),
            ", ".join(str(pid) for pid, _ in killed),
        )
    return [pid for pid, _ in killed]


def wake_on(store: SQLJobStore, states: frozenset[JobState], wakeup: Wakeup) -> None:
    """Wake a stage when this process's job store commits a transition into
    one of ``states`` (the work that stage takes). The stage still polls:
    commits of other processes are found at its next poll."""

    def _listener(moved: frozenset[JobState]) -> None:
        if moved & states:
            wakeup.set()

    store.on_commit(_listener)


class _Running(Protocol):
    def alive(self) -> bool: ...


def _alive(stage: _Running | None) -> bool:
    """Whether a stage was started and its threads (and processes) run."""
    return stage is not None and stage.alive()


# -- runs on Celery workers (runner.executor: celery) ------------------------


def shared_results_root(settings: Settings) -> Path:
    """Where Celery workers save results: under the spool, which every host mounts."""
    return settings.storage.spool_path / "results"


def build_celery_worker(settings: Settings, pipelines: tuple[str, ...], name: str) -> CeleryWorker:
    """A ``dicomnode worker`` for ``pipelines``, wired as the node's runner is:
    the same job store, the spool for inputs and outputs, the DICOM result
    writer, the destinations' HL7 headers.

    Raises
    ------
    ConfigError
        ``runner.executor`` is not ``celery``.
    """
    from dicomnode.runner.celery_worker import CeleryWorker

    runner = settings.runner
    if runner.executor != "celery" or runner.celery is None:
        raise ConfigError(
            "runner.executor: must be celery (with runner.celery.broker) for dicomnode worker"
        )
    return CeleryWorker(
        runner,
        build_store(settings),
        pipelines,
        name,
        WorkerSettings(
            device=runner.device,
            threads=runner.threads,
            plugins=tuple(runner.plugins),
            models_dir=str(runner.models_dir.resolve()),
            writer=DicomResultWriter(),
            preload=pipelines,
            node_name=settings.node.ae_title,
            options=pipeline_options(runner),
            descriptors=settings.monitoring.enabled,
        ),
        results_root=shared_results_root(settings),
        outbox_root=settings.storage.spool_path / "outbox",
        destinations=settings.destinations,
        log_level=settings.logging.level,
    )


class Node:
    """The running node.

    Parameters
    ----------
    settings : Settings
        The validated configuration.
    config_path : Path, optional
        The file it came from: :meth:`reload` (SIGHUP) re-reads it.
    """

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self._reload_requested = threading.Event()
        self.spool: Spool | None = None
        self.store: SQLJobStore | None = None
        self.ingress: IngressServer | None = None
        self.assembler: Assembler | None = None
        self.router: Router | None = None
        self.runner: Runner | None = None
        self.remote: RemoteRunner | None = None
        self.dispatcher: Dispatcher | None = None
        self.retention: RetentionSweeper | None = None
        self.drift: DriftMonitor | None = None
        self.metrics: NodeMetrics | None = None
        self.ops: OpsServer | None = None
        self.atna: SyslogForwarder | None = None
        self.console: ConsoleServer | None = None
        #: (PROMETHEUS_MULTIPROC_DIR before this node set it,), or None when it did not
        self._multiprocess_env: tuple[str | None] | None = None
        self.agreement: list[ShadowMonitor | CorrectionScorer] = []
        self._children: list[BaseProcess] = []
        self._mp = multiprocessing.get_context("spawn")
        self._ready: Any = None
        self._stop = threading.Event()
        self._lock_fd: int | None = None

    def _lock_data_dir(self) -> None:
        """Refuse to share a data directory with another running node."""
        data_dir = self.settings.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / "dicomnode.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StartupError(f"another node is already running on {data_dir}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _check_disk_floor(self, spool: Spool) -> None:
        """Say at start, loudly, when the spool's disk is already below
        ``storage.min_free_mb``: the node starts, but refuses every C-STORE
        (0xA700) until space is freed."""
        if not spool.below_floor():
            return
        mib = 1024 * 1024
        LOGGER.error(
            "the spool disk (%s) has %d MiB free, below storage.min_free_mb (%d MiB): every "
            "C-STORE is refused with 0xA700 (Out of Resources) until space is freed",
            spool.root,
            spool.free_bytes() // mib,
            self.settings.storage.min_free_mb,
        )

    def _probe_port(self) -> None:
        """With SO_REUSEPORT a second node would silently share the port:
        check first, without that option, that nobody listens there."""
        node = self.settings.node
        family = socket.AF_INET6 if ":" in node.bind else socket.AF_INET
        tls = self.settings.ingress.tls
        ports = [node.port] if tls is None or tls.port is None else [node.port, tls.port]
        for port in ports:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((node.bind, port))
                except OSError as exc:
                    raise StartupError(
                        f"cannot listen on {node.bind}:{port}: {exc.strerror}{in_use_hint(exc)}"
                    ) from exc

    def _start_child(self, index: int) -> BaseProcess:
        child = self._mp.Process(
            target=_ingress_child,
            args=(self.settings, self._ready, index, os.getpid()),
            name=f"ingress-{index}",
            daemon=False,
        )
        child.start()
        return child

    def start(self) -> None:
        """Recover the spool, open the listener(s), start assembly, routing,
        the runner, delivery and retention.

        Raises
        ------
        StartupError
            Something the admin must fix (the message says what).
        """
        try:
            self._lock_data_dir()
            self.spool = build_spool(self.settings)
            self.store = build_store(self.settings)
        except (OSError, DicomNodeError) as exc:
            raise StartupError(f"cannot open the data directory: {exc}") from exc
        reclaim_orphans(self.settings)
        if self.config_path is not None:
            reloading.remember_in_force(self.settings, self.config_path)
        self._check_disk_floor(self.spool)
        recover_spool(self.spool, self.store)
        processes = self.settings.ingress.processes
        self.metrics = self._build_metrics()
        self._start_ops()  # first: /readyz says what is not running yet
        self._start_console()
        if processes == 1:
            self.ingress = IngressServer(
                self.settings.node,
                self.settings.ingress,
                StoreHandler(self.spool, self.store),
                metrics=self.metrics.ingress,
            )
            try:
                self.ingress.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {self.settings.node.bind}:{self.settings.node.port}: "
                    f"{exc.strerror}{in_use_hint(exc)}"
                ) from exc
        else:
            self._probe_port()
            self._ready = self._mp.Queue()
            self._children = [self._start_child(i) for i in range(processes)]
            errors = []
            for _ in range(processes):
                index, error = self._ready.get(timeout=60)
                if error is not None:
                    errors.append(f"ingress-{index}: {error}")
            if errors:
                self.stop()
                raise StartupError("receiving processes failed to start: " + "; ".join(errors))
            LOGGER.info(
                "%d receiving processes listening as %s on %s:%d",
                processes,
                self.settings.node.ae_title,
                self.settings.node.bind,
                self.settings.node.port,
            )
        routing = self.settings.routing
        assembly = self.settings.assembly
        policy = (
            CompletionPolicy(routing, self.store, assembly.quiet_seconds, assembly.max_wait_seconds)
            if CompletionPolicy.needed(routing)
            else None
        )
        self.assembler = Assembler(assembly, self.store, policy=policy)
        wake_on(self.store, frozenset({JobState.RECEIVED}), self.assembler.wakeup)
        self.assembler.start()
        self.router = Router(routing, self.store, poll_seconds=assembly.poll_seconds)
        wake_on(self.store, frozenset({JobState.COMPLETE}), self.router.wakeup)
        self.router.start()
        if self.settings.runner.enabled and self.settings.runner.executor == "celery":
            from dicomnode.runner.remote import RemoteRunner

            self.remote = RemoteRunner(
                self.settings.runner, self.store, results_root=shared_results_root(self.settings)
            )
            wake_on(self.store, frozenset({JobState.ROUTED}), self.remote.wakeup)
            self.remote.start()
        elif self.settings.runner.enabled:
            runner = Runner(
                self.settings.runner,
                self.store,
                results_root=self.settings.storage.data_dir / "results",
                log_level=self.settings.logging.level,
                outbox_root=self.settings.storage.spool_path / "outbox",
                writer=DicomResultWriter(),
                node_name=self.settings.node.ae_title,
                destinations=self.settings.destinations,
                descriptors=self.settings.monitoring.enabled,
                metrics=self.metrics.runs,
                log_format=self.settings.logging.format,
                claimant=node_identity(self.settings),
                read_ahead_seconds=(
                    assembly.quiet_seconds + 60 if self.settings.runner.read_ahead else None
                ),
                read_ahead_after=assembly.quiet_seconds / 4,
                preload=tuple(
                    dict.fromkeys(
                        rule.pipeline
                        for rule in [*routing.rules, *filter(None, [routing.fallback])]
                    )
                ),
            )
            wake_on(self.store, frozenset({JobState.ROUTED}), runner.wakeup)
            try:
                runner.start()
            except DicomNodeError as exc:
                self.stop()
                raise StartupError(f"the pipeline runner cannot start: {exc}") from exc
            self.runner = runner
        self.dispatcher = Dispatcher(self.settings, self.store, metrics=self.metrics.export)
        wake_on(self.store, frozenset({JobState.RESULTS_WRITTEN}), self.dispatcher.wakeup)
        self.dispatcher.start()
        self.retention = RetentionSweeper(self.settings.storage, self.spool, self.store)
        self.retention.start()
        if self.settings.audit.syslog is not None:
            from dicomnode.admin.atna import SyslogForwarder

            self.atna = SyslogForwarder(
                self.store,
                self.settings.audit.syslog,
                self.settings.node.ae_title,
                self.settings.storage.data_dir / "run" / "atna-sent",
            )
            self.atna.start()
        if self.settings.monitoring.enabled:
            self.drift = DriftMonitor(self.settings.monitoring, self.store, time.time)
            self.drift.start()
            self._start_agreement(self.store)

    def _start_agreement(self, store: SQLJobStore) -> None:
        """Start comparing shadow runs with production runs and scoring
        radiologists' corrections (``monitoring.poll_seconds``)."""
        poll = self.settings.monitoring.poll_seconds
        self.agreement = [ShadowMonitor(store, poll), CorrectionScorer(store, poll)]
        for monitor in self.agreement:
            monitor.start()

    # -- metrics and health ---------------------------------------------

    def _build_metrics(self) -> NodeMetrics:
        """The node's metrics. With several receiving processes their values
        go through prometheus_client's multiprocess mode (see
        :mod:`dicomnode.metrics`): the directory is emptied and named in the
        environment the receiving processes inherit."""
        multiprocess_dir = None
        if self.settings.ingress.processes > 1:
            multiprocess_dir = node_metrics.prepare_multiprocess_dir(
                self.settings.storage.data_dir / "run" / "metrics"
            )
            self._multiprocess_env = (os.environ.get(node_metrics.MULTIPROCESS_ENV),)
            os.environ[node_metrics.MULTIPROCESS_ENV] = str(multiprocess_dir)
        metrics = NodeMetrics(multiprocess_dir)
        metrics.watch(
            NodeCollector(
                store=self.store,
                free_bytes=self.spool.free_bytes if self.spool is not None else None,
                drift=lambda: self.drift,
                workers=self._worker_states,
            )
        )
        return metrics

    def _worker_states(self) -> dict[str, int] | None:
        """The local runner's workers per state; all ``warming`` until the
        runner started them; ``None`` when this node runs no workers."""
        runner = self.settings.runner
        if not runner.enabled or runner.executor == "celery":
            return None
        if self.runner is None:
            return {"warm": 0, "warming": runner.workers}
        return self.runner.worker_states()

    def _start_ops(self) -> None:
        """Serve /metrics, /healthz and /readyz when ``metrics.enabled``."""
        config = self.settings.metrics
        if not config.enabled or self.metrics is None:
            return
        ops = OpsServer(config.host, config.port, self.metrics.exposition, self.readiness)
        try:
            ops.start()
        except OSError as exc:
            self.stop()
            raise StartupError(
                f"metrics: cannot listen on {config.host}:{config.port}: "
                f"{exc.strerror}{in_use_hint(exc)}"
            ) from exc
        self.ops = ops

    def _start_console(self) -> None:
        """Serve the web console and REST API when ``console.enabled``."""
        config = self.settings.console
        if not config.enabled or self.metrics is None or self.store is None:
            return
        from dicomnode.admin import Admin
        from dicomnode.auth import UserStore
        from dicomnode.web import ConsoleContext, ConsoleServer

        users = UserStore(
            self.settings.users_db_path,
            max_failed=config.max_failed_logins,
            lockout_seconds=config.lockout_minutes * 60,
        )
        spool = self.spool
        store = self.store
        ctx = ConsoleContext(
            settings=lambda: self.settings,
            admin=lambda: Admin(self.settings, store, config_path=self.config_path),
            users=users,
            readiness=self.readiness,
            exposition=self.metrics.exposition,
            free_bytes=spool.free_bytes if spool is not None else lambda: 0,
            pipelines=self._pipelines,
        )
        console = ConsoleServer(ctx, config.host, config.port)
        try:
            console.start()
        except OSError as exc:
            self.stop()
            raise StartupError(
                f"console: cannot listen on {config.host}:{config.port}: "
                f"{exc.strerror}{in_use_hint(exc)}"
            ) from exc
        except StartupError:
            self.stop()
            raise
        self.console = console

    def _pipelines(self) -> list[PipelineOut]:
        """The routed pipelines for the console: version, models (as their
        manifests declare them), device, and whether a worker holds them loaded."""
        from dicomnode.runner.manifest import read_manifest
        from dicomnode.runner.registry import PipelineRegistry
        from dicomnode.web.models import ModelOut, PipelineOut

        settings = self.settings
        runner = settings.runner
        routing = settings.routing
        rules: dict[str, list[str]] = {}
        for rule in [*routing.rules, *filter(None, [routing.fallback])]:
            rules.setdefault(rule.pipeline, []).append(rule.name)
        registry = PipelineRegistry.discover(runner.plugins)
        running = self.runner is not None and self.runner.alive()
        found = []
        for name, rule_names in rules.items():
            problems: list[str] = []
            models: list[ModelOut] = []
            version = None
            if name in registry:
                pipeline = registry.create(name)
                version = getattr(pipeline, "version", None)
                for model in getattr(pipeline, "required_models", ()):
                    try:
                        manifest = read_manifest(runner.models_dir / f"{model}.yaml")
                    except DicomNodeError as exc:
                        problems.append(str(exc))
                        continue
                    models.append(
                        ModelOut(name=model, version=manifest.version, sha256=manifest.sha256)
                    )
            else:
                problems.append(f"no installed pipeline {name!r}")
            found.append(
                PipelineOut(
                    name=name,
                    version=None if version is None else str(version),
                    rules=rule_names,
                    models=models,
                    device=runner.device if runner.enabled else "(runner off)",
                    warm=running and runner.executor == "local" and not problems,
                    problems=problems,
                )
            )
        return found

    def readiness(self) -> Health:
        """Whether the node can take and process studies now (``/readyz``):
        the job store answers, the spool's disk is above its floor, and every
        part's threads and processes run. See :mod:`dicomnode.health`."""
        parts: dict[str, Callable[[], bool]] = {"ingress": self._ingress_alive}
        stages: dict[str, _Running | None] = {
            "assembler": self.assembler,
            "router": self.router,
            "dispatcher": self.dispatcher,
        }
        if self.settings.runner.enabled:
            celery = self.settings.runner.executor == "celery"
            stages["runner"] = self.remote if celery else self.runner
        for name, stage in stages.items():
            parts[name] = functools.partial(_alive, stage)
        if self.settings.storage.retention_days is not None:
            parts["retention"] = lambda: self.retention is not None and self.retention.running
        if self.settings.console.enabled:
            parts["console"] = lambda: self.console is not None and self.console.alive()
        return readiness(self.store, self.spool, parts)

    def _ingress_alive(self) -> bool:
        if self.settings.ingress.processes == 1:
            return self.ingress is not None and self.ingress.alive()
        children = list(self._children)
        return bool(children) and all(child.is_alive() for child in children)

    def supervise(self) -> None:
        """Restart receiving processes that died (called periodically)."""
        for index, child in enumerate(self._children):
            if not child.is_alive() and not self._stop.is_set():
                LOGGER.error(
                    "receiving process %s exited with %s; restarting", child.name, child.exitcode
                )
                directory = os.environ.get(node_metrics.MULTIPROCESS_ENV)
                if directory and child.pid is not None:
                    node_metrics.forget_process(Path(directory), child.pid)
                self._children[index] = self._start_child(index)

    def stop(self) -> None:
        """Stop accepting, finish in-flight stores, stop assembly, close the store."""
        self._stop.set()
        if self.ops is not None:
            self.ops.stop()
            self.ops = None
        if self.console is not None:
            self.console.stop()
            self.console = None
        grace = self.settings.ingress.shutdown_grace_seconds
        for child in self._children:
            if child.is_alive() and child.pid is not None:
                child.terminate()
        for child in self._children:
            child.join(timeout=grace + 10)
            if child.is_alive():
                LOGGER.error("receiving process %s did not stop; killing it", child.name)
                child.kill()
                child.join()
        self._children = []
        if self._multiprocess_env is not None:
            (before,) = self._multiprocess_env
            if before is None:
                os.environ.pop(node_metrics.MULTIPROCESS_ENV, None)
            else:
                os.environ[node_metrics.MULTIPROCESS_ENV] = before
            self._multiprocess_env = None
        if self.drift is not None:
            self.drift.stop()
            self.drift = None
        for monitor in self.agreement:
            monitor.stop()
        self.agreement = []
        if self.retention is not None:
            self.retention.stop()
            self.retention = None
        if self.atna is not None:
            self.atna.stop()
            self.atna = None
        if self.ingress is not None:
            self.ingress.stop(grace)
            self.ingress = None
        if self.assembler is not None:
            self.assembler.stop()
            self.assembler = None
        if self.router is not None:
            self.router.stop()
            self.router = None
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        if self.remote is not None:
            self.remote.stop()
            self.remote = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        LOGGER.info("node stopped")

    def reload(self) -> bool:
        """Re-read the configuration file and apply what a reload can apply.

        The file is validated as ``serve`` does; an invalid one is refused
        (the problems, with their field paths, go to the log) and the
        configuration in force stays. A valid one's rules, destinations and
        export settings apply from now on: rounds routed after this use the
        new rules, deliveries the new destinations; associations in progress
        are not touched. Changes to other sections need a restart and are
        named in the log. Either way one ``config-reload`` audit row records
        who asked and the file before and after.

        Returns
        -------
        bool
            Whether the new configuration was applied.
        """
        if self.config_path is None:
            LOGGER.warning("reload: this node was started without a configuration file")
            return False
        actor = reloading.take_request(self.settings)
        plan = reloading.plan_reload(self.settings, self.config_path, actor)
        if plan.settings is None:
            LOGGER.error(
                "configuration reload refused, the configuration in force stays:\n%s",
                "\n".join(plan.problems),
            )
        else:
            self._apply(plan.settings)
            reloading.remember_in_force(plan.settings, self.config_path)
            LOGGER.info(
                "configuration reloaded (%s changed)%s",
                ", ".join(plan.changed) or "nothing",
                (
                    f"; {', '.join(plan.restart_needed)} changed and apply at the next restart"
                    if plan.restart_needed
                    else ""
                ),
            )
        if self.store is not None:
            self.store.record_audit(plan.audit)
        return plan.settings is not None

    def _apply(self, settings: Settings) -> None:
        """Hand the stages that read rules, destinations and export settings
        the new ones (each reads them afresh at every round or delivery)."""
        self.settings = settings
        if self.router is not None:
            self.router.config = settings.routing
        if self.assembler is not None and isinstance(self.assembler.policy, CompletionPolicy):
            self.assembler.policy.config = settings.routing
        if self.dispatcher is not None:
            self.dispatcher.settings = settings
            self.dispatcher.config = settings.export
        if self.runner is not None:
            self.runner.destinations = settings.destinations

    def request_reload(self) -> None:
        """Ask :meth:`serve_forever` to reload (safe from a signal handler)."""
        self._reload_requested.set()

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from a signal handler)."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Start, run until SIGTERM or SIGINT, then stop cleanly."""

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            LOGGER.info("received %s, shutting down", signal.Signals(signum).name)
            self.request_stop()

        def _on_hangup(signum: int, frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGHUP, _on_hangup)
        self.start()
        try:
            while not self._stop.wait(0.2):
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self.reload()
                self.supervise()
        finally:
            self.stop()
