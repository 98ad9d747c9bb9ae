"""The result writer the runner calls: every outgoing object for one result.

It reads the source instances in volume order, builds the SEG, the heatmap
overlays and parametric maps, and the TID 1500 SR (with the SEG, overlays and
maps among its evidence), and writes
them under ``context.out_dir`` as ``<Modality>_<SOPInstanceUID>.dcm`` with a
zeroed preamble. The directory is replaced as a whole, so a re-run leaves the
new objects only (their UIDs are derived from the inputs and the pipeline
version, so a PACS replaces rather than duplicates them). Then it builds the
ORU^R01 for each HL7 receiver in ``context.notifications``, naming the SR and
the SEG. What it made is returned as typed records
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
from dicomnode.results.oru import build_messages
from dicomnode.results.overlay import build_overlays
from dicomnode.results.pmap import build_parametric_maps
from dicomnode.results.preflight import check_writable
from dicomnode.results.seg import build_segmentation
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
        objects: list[Dataset] = []
        try:
            segmentation = build_segmentation(result, volume, sources, context)
            if segmentation is not None:
                objects.append(segmentation)
            overlays = build_overlays(
                result, volume, sources, context, series_number=9003, series_number_step=2
            )
            maps = build_parametric_maps(
                result, volume, sources, context, series_number=9004, series_number_step=2
            )
            report = build_report(
                result, volume, sources, context, segmentation, illustrations=[*overlays, *maps]
            )
            if report is not None:
                objects.append(report)
            objects.extend(overlays)
            objects.extend(maps)
            messages = build_messages(
                result,
                volume,
                sources[0],
                context,
                sr_uid=None if report is None else str(report.SOPInstanceUID),
                seg_uid=None if segmentation is None else str(segmentation.SOPInstanceUID),
                timestamp=datetime.now(UTC),
            )
        except InputRefused:
            raise
        except ValueError as exc:
            # highdicom (and the ORU builder) refuse inputs with ValueError; building
            # is a pure function of the result and the source headers, so a retry
            # would meet it again
            raise ResultError(f"the result objects cannot be made from this input: {exc}") from exc
        return WrittenResult(objects=self._save(objects, context.out_dir), messages=messages)

    @staticmethod
    def _save(objects: list[Dataset], out_dir: Path) -> tuple[ResultObject, ...]:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_path(out_dir)
        staging.mkdir()
        names: list[str] = []
        try:
            for ds in objects:
                name = f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
                ds.save_as(staging / name, enforce_file_format=True)
                with (staging / name).open("rb") as handle:
                    os.fsync(handle.fileno())
                names.append(name)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            staging.rename(out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return tuple(
            ResultObject(
                kind=str(ds.Modality),
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                path=out_dir / name,
            )
            for ds, name in zip(objects, names, strict=True)
        )
