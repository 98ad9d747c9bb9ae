"""Running a pipeline by hand on a folder, as the node's workers run it
(``dicomnode run``): no job store, no delivery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicomnode.config.schema import RunnerConfig
from dicomnode.errors import DicomNodeError
from dicomnode.results.writer import DicomResultWriter
from dicomnode.routing import describe_study
from dicomnode.runner.stage import pipeline_options
from dicomnode.runner.worker import Task, Worker, WorkerSettings


@dataclass(frozen=True)
class OfflineRun:
    """What :func:`run_offline` did.

    Attributes
    ----------
    series_instance_uid : str
        The series the pipeline ran on.
    series_found : int
        How many series the folder holds (the largest is taken unless one is named).
    files : tuple of str
        The series' files.
    ok : bool
        Whether the pipeline and the writer succeeded.
    device : str
        Where it ran.
    summary : str
        The result's summary, or why it failed.
    traceback : str or None
        The failure's traceback.
    objects : tuple of str
        The DICOM objects written (none with ``dicom=False``).
    """

    series_instance_uid: str
    series_found: int
    files: tuple[str, ...]
    ok: bool
    device: str
    summary: str
    traceback: str | None
    objects: tuple[str, ...]


def _series_files(paths: list[Path], wanted: str) -> list[Path]:
    found = []
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError):
            continue
        if str(ds.get("SeriesInstanceUID", "")) == wanted:
            found.append(path)
    return found


def run_offline(
    source: Path,
    pipeline: str,
    out: Path,
    *,
    runner: RunnerConfig,
    node_name: str = "DICOMNODE",
    series_uid: str | None = None,
    device: str | None = None,
    bundle: Path | None = None,
    dicom: bool = True,
) -> OfflineRun:
    """Run ``pipeline`` on one series of the files under ``source``; the
    result goes to ``out`` (and its DICOM objects to ``out/dicom``).

    Raises
    ------
    DicomNodeError
        No DICOM series there, or not the one named.
    """
    paths = [p for p in source.rglob("*") if p.is_file()] if source.is_dir() else [source]
    series = [s for study in describe_study(paths) for s in study.series]
    if not series:
        raise DicomNodeError(f"no DICOM series under {source}")
    if series_uid is not None:
        chosen = [s for s in series if s.series_instance_uid == series_uid]
        if not chosen:
            raise DicomNodeError(f"no series {series_uid} under {source}")
        picked = chosen[0]
    else:
        picked = max(series, key=lambda s: s.instance_count)
    files = tuple(str(p) for p in _series_files(paths, picked.series_instance_uid))
    options = pipeline_options(runner)
    if bundle is not None:
        options.setdefault(pipeline, {})["bundle"] = str(bundle.resolve())
    worker = Worker(
        WorkerSettings(
            device=device or runner.device,
            threads=runner.threads,
            plugins=tuple(runner.plugins),
            models_dir=str(runner.models_dir.resolve()),
            writer=DicomResultWriter() if dicom else None,
            node_name=node_name,
            options=options,
            descriptors=False,
        )
    )
    outcome = worker.run(
        Task(
            job_id=0,
            pipeline=pipeline,
            files=files,
            result_dir=str(out),
            outbox_dir=str(out / "dicom"),
        )
    )
    return OfflineRun(
        series_instance_uid=picked.series_instance_uid,
        series_found=len(series),
        files=files,
        ok=outcome.ok,
        device=str(worker.device),
        summary=outcome.summary,
        traceback=outcome.traceback,
        objects=tuple(str(item.path) for item in outcome.objects),
    )
