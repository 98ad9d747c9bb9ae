"""The result writer the runner calls: every outgoing object for one result.

It reads the source instances in volume order, builds the SEG, the heatmap
overlays and parametric maps, and the TID 1500 SR (with the SEG, overlays and
maps among its evidence), and writes
them under ``context.out_dir`` as ``<Modality>_<SOPInstanceUID>.dcm`` with a
zeroed preamble. The directory is replaced as a whole, so a re-run leaves the
new objects only (their UIDs are derived from the inputs and the pipeline
version, so a PACS replaces rather than duplicates them). Then it builds the
ORU^R01 for each HL7 receiver in ``context.notifications``, naming the SR and
the SEG. For a volume of several slices the SEG is built and saved by a forked
child while this process builds the rest (:mod:`~dicomnode.results.forked`):
the report needs only the SEG's UIDs and segment labels, which are known
before the SEG is built; nothing is in ``out_dir`` until every object is.
What it made is returned as typed records
(:class:`~dicomnode.protocol.WrittenResult`) for the outbox: export sends
them as they are.

Series numbers: SEG 9001, SR 9002; the overlay series of the i-th heatmap
``9003 + 2 i`` and its parametric map ``9004 + 2 i``, so every series has its
own number and each map sits next to its overlay.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomnode.errors import ResultError
from dicomnode.protocol import (
    InputRefused,
    PipelineResult,
    ResultContext,
    ResultObject,
    Volume,
    WrittenResult,
)
from dicomnode.resultfile import staging_path
from dicomnode.results.forked import ChildError, Forked, can_fork
from dicomnode.results.oru import build_messages
from dicomnode.results.overlay import build_overlays
from dicomnode.results.pmap import build_parametric_maps
from dicomnode.results.preflight import check_writable
from dicomnode.results.seg import build_segmentation, segmentation_reference
from dicomnode.results.sr import build_report
from dicomnode.results.warmup import warm_up_case

LOGGER = logging.getLogger(__name__)


def read_sources(volume: Volume, files: Sequence[Path]) -> list[Dataset]:
    """The source datasets in volume order (a multi-frame file repeats).

    Pixel data is deferred: read from the file only if something needs it (the
    objects are built from the headers and the volume)."""
    return in_volume_order(volume, [pydicom.dcmread(path, defer_size=4096) for path in files])


def in_volume_order(volume: Volume, datasets: Sequence[Dataset]) -> list[Dataset]:
    """``datasets`` in the order of ``volume.sources`` (a multi-frame instance repeats).

    Raises
    ------
    ValueError
        An instance of the volume is not among them.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    missing = [s.sop_instance_uid for s in volume.sources if s.sop_instance_uid not in by_uid]
    if missing:
        raise ValueError(f"{len(missing)} source instance(s) of the volume are not in the files")
    return [by_uid[s.sop_instance_uid] for s in volume.sources]


class DicomResultWriter:
    """:class:`~dicomnode.protocol.ResultWriter` writing SEG, SR, overlays and
    parametric maps, and building the ORU^R01 of each notification."""

    def __init__(self, *, parallel: bool = True) -> None:
        #: build and save the SEG of a volume of several slices in a forked child
        #: while this process builds the report and the rest (the report needs
        #: only the SEG's UIDs and segment labels, see ``segmentation_reference``)
        self.parallel = parallel

    def warm_up(self) -> float:
        """Write a tiny throw-away result (:mod:`~dicomnode.results.warmup`)
        in a temporary directory, so that the first study does not pay the
        one-off costs of a first SEG and SR in this process.

        Returns
        -------
        float
            The seconds it took.
        """
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="dicomnode-warm-up-") as tmp:
            case = warm_up_case(Path(tmp))
            self.write(case.result, case.volume, case.context)
        return time.perf_counter() - started

    def write(
        self, result: PipelineResult, volume: Volume, context: ResultContext
    ) -> WrittenResult:
        """Write every object for ``result`` and build its notifications.

        Returns
        -------
        WrittenResult
            The objects (kind, UIDs, file) in the order written, and one
            message per :class:`~dicomnode.protocol.NotificationTarget`.

        Raises
        ------
        InputRefused
            The sources' Patient Name holds several values (a backslash in the
            name): no object is written under an ambiguous patient name.
        ResultError
            The sources lack what the objects need (a Frame of Reference UID,
            see :func:`~dicomnode.results.preflight.check_writable`), or
            highdicom refuses them; nothing is written, and the run is DEAD at
            once (retrying the same input cannot help).
        """
        sources = (
            in_volume_order(volume, context.sources)
            if context.sources
            else read_sources(volume, context.source_files)
        )
        name = sources[0].get("PatientName") if sources else None
        if isinstance(name, MultiValue) and len(name) > 1:
            raise InputRefused(
                f"the source's Patient Name holds {len(name)} values (a backslash in the "
                "name); no result is written under an ambiguous patient name"
            )
        check_writable(result, volume, sources)
        out_dir = context.out_dir
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_path(out_dir)
        staging.mkdir()
        beside: Forked | None = None
        try:
            try:
                reference = (
                    segmentation_reference(result, volume, sources, context)
                    if self.parallel and can_fork() and len(volume.sources) > 1
                    else None
                )
                if reference is not None:
                    beside = _segmentation_beside(
                        result, volume, sources, context, reference, staging
                    )
                segmentation = (
                    build_segmentation(result, volume, sources, context) if beside is None else None
                )
                overlays = build_overlays(
                    result, volume, sources, context, series_number=9003, series_number_step=2
                )
                maps = build_parametric_maps(
                    result, volume, sources, context, series_number=9004, series_number_step=2
                )
                seg = segmentation if beside is None else reference
                report = build_report(
                    result, volume, sources, context, seg, illustrations=[*overlays, *maps]
                )
                messages = build_messages(
                    result,
                    volume,
                    sources[0],
                    context,
                    sr_uid=None if report is None else str(report.SOPInstanceUID),
                    seg_uid=None if seg is None else str(seg.SOPInstanceUID),
                    timestamp=datetime.now(UTC),
                )
                written = [ds for ds in (segmentation, report) if ds is not None]
                for ds in [*written, *overlays, *maps]:
                    _save(ds, staging)
                if beside is not None:
                    _wait(beside)
                    beside = None
            except InputRefused:
                raise
            except ValueError as exc:
                # highdicom (and the ORU builder) refuse inputs with ValueError; building
                # is a pure function of the result and the source headers, so a retry
                # would meet it again
                raise ResultError(
                    f"the result objects cannot be made from this input: {exc}"
                ) from exc
            if out_dir.exists():
                shutil.rmtree(out_dir)
            staging.rename(out_dir)
        except BaseException:
            if beside is not None:
                beside.abandon()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        objects = [ds for ds in (seg, report) if ds is not None] + [*overlays, *maps]
        return WrittenResult(
            objects=tuple(
                ResultObject(
                    kind=str(ds.Modality),
                    sop_class_uid=str(ds.SOPClassUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    study_instance_uid=str(ds.StudyInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    path=out_dir / _file_name(ds),
                )
                for ds in objects
            ),
            messages=messages,
        )


def _file_name(ds: Dataset) -> str:
    """An object's file name: ``<Modality>_<SOPInstanceUID>.dcm``."""
    return f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"


def _save(ds: Dataset, folder: Path) -> None:
    """Write ``ds`` into ``folder`` under :func:`_file_name`, fsynced."""
    path = folder / _file_name(ds)
    ds.save_as(path, enforce_file_format=True)
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _segmentation_beside(
    result: PipelineResult,
    volume: Volume,
    sources: Sequence[Dataset],
    context: ResultContext,
    reference: Dataset,
    folder: Path,
) -> Forked | None:
    """Build and save the SEG in a forked child while this process builds the
    other objects (:mod:`~dicomnode.results.forked`); ``None`` when no child
    can be forked (the caller builds it itself)."""

    def work() -> None:
        segmentation = build_segmentation(result, volume, sources, context)
        if segmentation is None or any(
            str(segmentation[k].value) != str(reference[k].value)
            for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
        ):
            raise RuntimeError("the SEG built differs from the reference the report names")
        _save(segmentation, folder)

    try:
        return Forked.start(work)
    except OSError as exc:
        LOGGER.warning("no child process for the SEG (%s): built in the worker", exc.strerror)
        return None


def _wait(beside: Forked) -> None:
    """Wait for the SEG's child; its failure as the writer's own."""
    try:
        beside.wait()
    except ChildError as exc:
        if exc.kind == "ValueError":  # highdicom refused the input: as in this process
            raise ValueError(str(exc)) from exc
        raise RuntimeError(f"building the SEG failed: {exc.kind}: {exc}") from exc
