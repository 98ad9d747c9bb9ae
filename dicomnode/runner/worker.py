"""The worker process: loads pipelines once, runs one job at a time.

A worker talks to the runner over a pipe: it receives a :class:`Task`, sends
back an :class:`Outcome`. Whatever a pipeline does (raise, exit, crash, hang,
eat memory) stays in this process; the runner sees a failed or missing
outcome and the node keeps serving.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from pydicom.dataset import Dataset

from dicomnode.errors import InputError, ModelError, ResultError, RunnerError, VolumeError
from dicomnode.logs import formatter
from dicomnode.monitoring.descriptors import describe
from dicomnode.protocol import (
    InputRefused,
    ModelFile,
    MultiInput,
    NotificationTarget,
    Pipeline,
    PipelineResult,
    ResultContext,
    ResultMessage,
    ResultObject,
    ResultWriter,
    Volume,
)
from dicomnode.resultfile import record_timings, save_result
from dicomnode.runner.contract import check_input, range_problems
from dicomnode.runner.inputs import pick_role_series, resample_onto
from dicomnode.runner.manifest import verify_model
from dicomnode.runner.prefetch import Prefetch, SeriesCache
from dicomnode.runner.registry import PipelineRegistry
from dicomnode.runner.volume import drop_pixels, load_series, load_series_datasets, read_series

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One pipeline run, as sent to a worker.

    ``final`` and ``notifications`` go to the result writer's
    :class:`~dicomnode.protocol.ResultContext`; ``out_of_range`` (``flag``
    or ``refuse``, from the rule) says what a volume outside the pipeline's
    validated range gets; ``shadow`` marks a candidate's run in shadow mode.
    """

    job_id: int
    pipeline: str
    files: tuple[str, ...]
    result_dir: str
    outbox_dir: str | None = None
    final: bool = False
    notifications: tuple[NotificationTarget, ...] = ()
    out_of_range: str = "flag"
    shadow: bool = False
    study_files: tuple[str, ...] = ()
    """Every instance of the run's round (all its series), where a multi-input
    pipeline's further series are picked by role."""


@dataclass(frozen=True)
class Outcome:
    """What a worker reports for a task.

    Attributes
    ----------
    ok : bool
        The result was saved.
    summary : str
        The result's summary, or the failure's reason.
    permanent : bool
        Retrying cannot help (bad input, bad model, unknown pipeline).
    traceback : str, optional
        Of the failure.
    objects, messages : tuples
        What the result writer made, for the outbox.
    """

    job_id: int
    ok: bool
    summary: str
    permanent: bool = False
    traceback: str | None = None
    objects: tuple[ResultObject, ...] = ()
    messages: tuple[ResultMessage, ...] = ()
    descriptors: str | None = None
    """The run's input and output descriptors (JSON), for drift checks."""
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds per step of a successful run (``load_s``, ``pipeline_s``,
    ``save_s``, ``write_s``, ``describe_s``), as in ``result.json``, for the metrics."""


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker needs besides its tasks."""

    device: str
    threads: int
    plugins: tuple[str, ...]
    models_dir: str
    writer: ResultWriter | None = None
    node_name: str = "DICOMNODE"
    preload: tuple[str, ...] = ()
    """Pipelines to create and load as soon as the worker starts (the ones the
    rules name), so the first study does not wait for them."""
    options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """Per-pipeline options (pipeline name to options), given to a pipeline's
    ``configure(options)`` before ``load``, e.g. ``monai-bundle``'s ``bundle``."""
    descriptors: bool = True
    """Describe each run's input and output for drift checks (``monitoring.enabled``)."""
    log_format: str = "text"
    """``logging.format``: ``text`` or ``json`` lines from the worker."""


#: What a worker sends once its pipelines are loaded and its writer warmed up.
WARM = ("warm", None)


def resolve_device(requested: str) -> str:
    """``auto`` becomes ``cuda:0`` when CUDA is available, else ``cpu``."""
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RunnerError(f"runner.device is {requested!r} but CUDA is not available")
    return "cuda:0" if requested == "cuda" else requested


class Worker:
    """The state a worker keeps between tasks: pipelines, loaded once each."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.registry = PipelineRegistry.discover(settings.plugins)
        self._loaded: dict[str, Pipeline] = {}
        #: volumes read while their study's quiet period ran (:mod:`~dicomnode.runner.prefetch`)
        self.cache = SeriesCache()

    def prefetch(self, request: Prefetch) -> None:
        """Read a study's series ahead of its runs; a failure only means its
        runs read them themselves."""
        mark = time.perf_counter()
        try:
            kept = self.cache.fill(request)
        except Exception as exc:  # noqa: BLE001 - reading ahead must never end the worker
            self.cache.clear()
            LOGGER.warning("worker %d: reading ahead failed: %s", os.getpid(), type(exc).__name__)
            return
        LOGGER.debug(
            "worker %d: read %d instance(s) ahead as %d volume(s) in %.2f s",
            os.getpid(),
            len(request.files),
            kept,
            time.perf_counter() - mark,
        )

    def _load(self, files: tuple[str, ...]) -> tuple[list[Dataset], Volume]:
        """The input series' headers and volume: read ahead when they were
        (and no file changed since), else read now."""
        ahead = self.cache.take(files)
        if ahead is not None:
            LOGGER.info("worker %d: the volume was read during the quiet period", os.getpid())
            return ahead
        datasets = read_series([Path(f) for f in files])
        volume = load_series_datasets(datasets)
        drop_pixels(datasets)  # the writer needs their headers, the volume has the pixels
        return datasets, volume

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline ``name``, created and loaded on first use.

        A pipeline with a ``configure`` method gets its options from
        ``runner.pipelines.<name>`` (when the config gives any) before ``load``.
        """
        if name not in self._loaded:
            pipeline = self.registry.create(name)
            options = self.settings.options.get(name)
            configure = getattr(pipeline, "configure", None)
            if options and callable(configure):
                configure(options)
            required: tuple[str, ...] = tuple(getattr(pipeline, "required_models", ()))
            if required:
                models: dict[str, ModelFile] = {
                    model: verify_model(Path(self.settings.models_dir), model) for model in required
                }
                pipeline.load(self.device, models)  # type: ignore[call-arg]
            else:
                pipeline.load(self.device)
            self._loaded[name] = pipeline
        return self._loaded[name]

    def run(self, task: Task) -> Outcome:
        """Run one task; every failure becomes an :class:`Outcome`.

        A failure that the same input would meet again (a series that is no
        volume, a volume outside the pipeline's input contract, or outside
        its validated range where the rule refuses such input, a pipeline's
        :class:`~dicomnode.protocol.InputRefused`, a bad model, sources the
        result writer cannot make objects from) is ``permanent``: the run is
        DEAD at once with its reason. Any other exception may be retried.

        The seconds spent loading the volume, in the pipeline, saving the
        result and writing the DICOM objects go to ``result.json``'s
        ``"timings"`` (``load_s``, ``pipeline_s``, ``save_s``, ``write_s``, and
        ``describe_s``: the descriptors for drift checks).
        """
        started = time.monotonic()
        try:
            pipeline = self.pipeline(task.pipeline)
            mark = time.perf_counter()
            datasets, volume = self._load(task.files)
            timings = {"load_s": time.perf_counter() - mark}
            check_input(pipeline.name, pipeline.input, volume)
            outside = tuple(range_problems(pipeline.input.validated, volume))
            if outside and task.out_of_range == "refuse":
                raise InputRefused(
                    f"input outside the validated range of {pipeline.name}: "
                    f"{'; '.join(outside)} (the rule's out_of_range is refuse: no result)"
                )
            mark = time.perf_counter()
            if isinstance(pipeline, MultiInput) and pipeline.input_roles:
                picked = pick_role_series(pipeline.input_roles, task.study_files or task.files)
                inputs = {
                    role: resample_onto(load_series([Path(f) for f in files]), volume)
                    for role, files in picked.items()
                }
                timings["load_s"] += time.perf_counter() - mark
                mark = time.perf_counter()
                result = pipeline.run_inputs(volume, inputs, self.device)
            else:
                result = pipeline.run(volume, self.device)
            timings["pipeline_s"] = time.perf_counter() - mark
            result.check_grid(volume)
            mark = time.perf_counter()
            result_dir = save_result(
                result,
                volume,
                Path(task.result_dir),
                pipeline=pipeline.name,
                version=pipeline.version,
                algorithm=pipeline.algorithm,
                device=self.device,
                seconds=time.monotonic() - started,
                timings=timings,
            )
            save_s = time.perf_counter() - mark
            objects: tuple[ResultObject, ...] = ()
            messages: tuple[ResultMessage, ...] = ()
            write_s = 0.0
            if self.settings.writer is not None and task.outbox_dir is not None:
                context = ResultContext(
                    job_id=task.job_id,
                    pipeline_name=pipeline.name,
                    pipeline_version=pipeline.version,
                    source_files=tuple(Path(f) for f in task.files),
                    out_dir=Path(task.outbox_dir),
                    node_name=self.settings.node_name,
                    algorithm=pipeline.algorithm,
                    final=task.final,
                    notifications=task.notifications,
                    out_of_range=outside,
                    shadow=task.shadow,
                    sources=tuple(datasets),
                )
                mark = time.perf_counter()
                written = self.settings.writer.write(result, volume, context)
                objects, messages = written.objects, written.messages
                write_s = time.perf_counter() - mark
            mark = time.perf_counter()
            descriptors = self._describe(task, volume, result)
            describe_s = time.perf_counter() - mark
            record_timings(
                result_dir, {"save_s": save_s, "write_s": write_s, "describe_s": describe_s}
            )
            summary = result.summary or "result saved"
            if outside:
                summary += f" (input outside the validated range: {'; '.join(outside)})"
            return Outcome(
                task.job_id,
                ok=True,
                summary=_with_provenance(summary, result),
                objects=objects,
                messages=messages,
                descriptors=descriptors,
                timings={
                    **timings,
                    "save_s": save_s,
                    "write_s": write_s,
                    "describe_s": describe_s,
                },
            )
        except (VolumeError, ModelError, InputError, RunnerError, InputRefused, ResultError) as exc:
            return Outcome(
                task.job_id,
                ok=False,
                summary=str(exc),
                permanent=True,
                traceback=traceback.format_exc(),
            )
        except Exception as exc:  # noqa: BLE001 - the worker boundary records any failure
            return Outcome(
                task.job_id,
                ok=False,
                summary=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )

    def _describe(self, task: Task, volume: Volume, result: PipelineResult) -> str | None:
        """The run's descriptors, or ``None`` when they are off or cannot be
        made: describing never fails a run."""
        if not self.settings.descriptors:
            return None
        try:
            return describe(volume, result, Path(task.files[0]) if task.files else None)
        except Exception as exc:  # noqa: BLE001 - monitoring must not fail the run
            LOGGER.warning(
                "job %d: no descriptors for drift checks: %s: %s",
                task.job_id,
                type(exc).__name__,
                exc,
            )
            return None


def _with_provenance(summary: str, result: PipelineResult) -> str:
    """The summary with the models that made it, as the job store records it."""
    if not result.models:
        return summary
    models = "; ".join(f"{m.name} {m.version} sha256 {m.sha256}" for m in result.models)
    return f"{summary} [models: {models}]"


def warm_up(settings: WorkerSettings) -> None:
    """Let the result writer pay its first-use costs now (a throw-away result),
    not during the first study. A failure only costs that study the time."""
    if settings.writer is None:
        return
    try:
        seconds = settings.writer.warm_up()
    except Exception as exc:  # noqa: BLE001 - a real run reports its own errors
        LOGGER.warning("worker %d: result writer warm-up failed: %s", os.getpid(), exc)
        return
    LOGGER.info("worker %d: result writer warmed up in %.1f s", os.getpid(), seconds)


def worker_main(conn: Connection, settings: WorkerSettings, log_level: str) -> None:
    """Entry point of a worker process: serve tasks until ``None`` arrives."""
    # Ctrl-C in a terminal reaches the whole process group: the node stops its
    # workers itself (``None``, then a join), so a worker does not die of it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # one line per record, control characters escaped: header values and
    # pydicom's warnings about them come from what senders sent
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(settings.log_format))
    logging.basicConfig(level=log_level, handlers=[handler])
    logging.captureWarnings(True)
    if log_level != "DEBUG":
        # highdicom logs every module it copies into a result object at INFO
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)
    try:
        worker = Worker(settings)
    except RunnerError as exc:
        conn.send(("fatal", str(exc)))
        return
    conn.send(("ready", worker.device))
    LOGGER.info("worker %d ready on %s", os.getpid(), worker.device)
    for name in settings.preload:
        try:
            worker.pipeline(name)
        except Exception as exc:  # noqa: BLE001 - a run of it will fail and record why
            LOGGER.warning("worker %d: could not preload %s: %s", os.getpid(), name, exc)
    warm_up(settings)
    # the pool counts warm workers (``dicomnode_runner_workers``): a task sent
    # before this waited for the loading above
    conn.send(WARM)
    while True:
        if not conn.poll(worker.cache.wait_seconds()):
            worker.cache.clear()  # read ahead for runs that did not come
            continue
        message = conn.recv()
        if message is None:
            return
        if isinstance(message, Prefetch):
            worker.prefetch(message)
        else:
            conn.send(worker.run(message))
