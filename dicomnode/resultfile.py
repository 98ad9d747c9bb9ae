"""A pipeline result on disk, for the result writers to turn into DICOM.

Layout of one result directory::

    result.json        pipeline, models, segments, measurements, findings,
                       summary, and the input volume's geometry and sources
    label_map.npy      uint8 (slices, rows, columns), when there is one
    heatmap-<i>.npy    float32, one per heatmap, in result.json's order

The directory is written under a temporary name and renamed into place, so a
reader never sees half a result. ``result.json`` may carry ``timings``: seconds
per step of the run (``load_s``, ``pipeline_s``, ``save_s``, ``write_s``,
``describe_s``), the last ones added by :func:`record_timings` once they are known.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.protocol import (
    Algorithm,
    Code,
    Finding,
    Heatmap,
    Measurement,
    ModelInfo,
    PipelineResult,
    Segment,
    SliceSource,
    Volume,
)
from dicomnode.writers import left_by_a_gone_writer, writer_tag

RESULT_JSON = "result.json"
LABEL_MAP = "label_map.npy"
STAGING_MARK = ".tmp-"
"""What the name of a file or folder being written carries until it is renamed into place."""


def staging_path(final: Path) -> Path:
    """A fresh temporary name beside ``final`` to write under before renaming."""
    return final.with_name(f"{final.name}{STAGING_MARK}{writer_tag()}.{secrets.token_hex(4)}")


def remove_staging(root: Path) -> int:
    """Remove what a crash left half-written under ``root``: result and outbox
    folders and ``result.json`` files still under their temporary names.

    Only call it before this node's workers start. What other nodes sharing
    the folder are writing is left alone (see :mod:`dicomnode.writers`).
    Returns how many were removed.
    """
    if not root.is_dir():
        return 0
    removed = 0
    for entry in root.iterdir():
        if STAGING_MARK in entry.name:
            if left_by_a_gone_writer(entry.name):
                _remove(entry)
                removed += 1
        elif entry.is_dir() and not entry.is_symlink():
            for inner in entry.glob(f"{RESULT_JSON}{STAGING_MARK}*"):
                if left_by_a_gone_writer(inner.name):
                    _remove(inner)
                    removed += 1
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _code(data: dict[str, str]) -> Code:
    return Code(data["value"], data["scheme"], data["meaning"])


def save_result(
    result: PipelineResult,
    volume: Volume,
    directory: Path,
    *,
    pipeline: str,
    version: str,
    algorithm: Algorithm,
    device: str,
    seconds: float,
    timings: Mapping[str, float] | None = None,
) -> Path:
    """Write ``result`` (and the geometry of ``volume``) to ``directory``,
    replacing an earlier result there. Return ``directory``.

    ``timings`` (seconds per step of the run, e.g. ``load_s``) go to
    ``result.json`` under ``"timings"``; :func:`record_timings` adds later ones.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(directory)
    staging.mkdir()
    try:
        document: dict[str, Any] = {
            "pipeline": {
                "name": pipeline,
                "version": version,
                "algorithm": {
                    "family": asdict(algorithm.family),
                    "trained_model": algorithm.trained_model,
                },
            },
            "device": device,
            "seconds": round(seconds, 3),
            "timings": _rounded(timings or {}),
            "models": [asdict(m) for m in result.models],
            "summary": result.summary,
            "segments": [asdict(s) for s in result.segments],
            "measurements": [asdict(m) for m in result.measurements],
            "findings": [asdict(f) for f in result.findings],
            "heatmaps": [asdict(h.finding) for h in result.heatmaps],
            "volume": {
                "shape": list(volume.array.shape),
                "spacing": list(volume.spacing),
                "origin": list(volume.origin),
                "row_direction": list(volume.row_direction),
                "column_direction": list(volume.column_direction),
                "slice_direction": list(volume.slice_direction),
                "modality": volume.modality,
                "study_instance_uid": volume.study_instance_uid,
                "series_instance_uid": volume.series_instance_uid,
                "frame_of_reference_uid": volume.frame_of_reference_uid,
                "sources": [asdict(s) for s in volume.sources],
            },
        }
        if result.label_map is not None:
            np.save(staging / LABEL_MAP, result.label_map)
        for index, heatmap in enumerate(result.heatmaps):
            np.save(staging / f"heatmap-{index}.npy", heatmap.array.astype(np.float32))
        (staging / RESULT_JSON).write_text(json.dumps(document, indent=1), encoding="utf-8")
        for item in staging.iterdir():
            with item.open("rb") as handle:
                os.fsync(handle.fileno())
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _rounded(timings: Mapping[str, float]) -> dict[str, float]:
    return {name: round(float(value), 4) for name, value in timings.items()}


def record_timings(directory: Path, timings: Mapping[str, float]) -> None:
    """Add ``timings`` (seconds per step) to the ``"timings"`` of a saved
    result's ``result.json``, replacing the file atomically (a temporary file,
    fsynced, then renamed over it), so a reader sees the old or the new file."""
    path = directory / RESULT_JSON
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    document["timings"] = {**document.get("timings", {}), **_rounded(timings)}
    staging = staging_path(path)
    try:
        with staging.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(document, indent=1))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def load_result(directory: Path, *, arrays: bool = True) -> tuple[PipelineResult, dict[str, Any]]:
    """Read a saved result; return it with the rest of ``result.json``
    (pipeline, device, volume geometry and sources). With ``arrays=False`` the
    label map and heatmaps are not read (a report needs only the numbers)."""
    document: dict[str, Any] = json.loads((directory / RESULT_JSON).read_text(encoding="utf-8"))
    label_path = directory / LABEL_MAP
    label_map = np.load(label_path) if arrays and label_path.exists() else None
    segments = tuple(
        Segment(
            label=s["label"],
            name=s["name"],
            category=_code(s["category"]),
            type=_code(s["type"]),
            anatomic_region=_code(s["anatomic_region"]) if s.get("anatomic_region") else None,
            color=tuple(s["color"]) if s.get("color") else None,
        )
        for s in document["segments"]
    )
    result = PipelineResult(
        label_map=label_map,
        segments=segments,
        measurements=tuple(
            Measurement(
                concept=_code(m["concept"]),
                value=m["value"],
                unit=_code(m["unit"]),
                segment_label=m.get("segment_label"),
            )
            for m in document["measurements"]
        ),
        findings=tuple(
            Finding(
                concept=_code(f["concept"]), probability=f["probability"], threshold=f["threshold"]
            )
            for f in document["findings"]
        ),
        heatmaps=tuple(
            Heatmap(finding=_code(code), array=np.load(directory / f"heatmap-{i}.npy"))
            for i, code in enumerate(document["heatmaps"] if arrays else [])
        ),
        models=tuple(ModelInfo(**m) for m in document["models"]),
        summary=document["summary"],
    )
    document["volume"]["sources"] = [SliceSource(**s) for s in document["volume"]["sources"]]
    return result, document
