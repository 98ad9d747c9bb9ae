"""Scoring a pipeline on a labelled set, with the code the node runs.

A labelled set is a folder of DICOM studies. Reference segmentations are
DICOM SEG objects in the same folder (any layout); their segments are matched
to the pipeline's segments by Segmented Property Type code (SNOMED CT).
Labels for a classifier come from a CSV with the columns ``StudyInstanceUID``
and ``label`` (1 positive, 0 negative), and optionally ``finding`` (the code
value or meaning of the pipeline's finding, when it reports more than one).

Each study's largest image series goes through the runner's own path: the
registry builds and loads the pipeline (:class:`~dicomnode.runner.worker.Worker`),
:func:`~dicomnode.runner.volume.load_series` makes the volume,
:func:`~dicomnode.runner.contract.check_input` applies the input contract, and
the pipeline runs on the CPU.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicomnode.errors import DicomNodeError
from dicomnode.monitoring.metrics import (
    bootstrap_ci,
    classification_metrics,
    mean_of,
    roc_band,
    segmentation_metrics,
)
from dicomnode.protocol import InputRefused, Volume
from dicomnode.runner.contract import check_input
from dicomnode.runner.volume import load_series
from dicomnode.runner.worker import Worker, WorkerSettings

__all__ = ["STRATA", "Evaluation", "EvaluationError", "evaluate"]

log = logging.getLogger(__name__)

#: header attributes results are broken down by
STRATA = (
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "SliceThickness",
    "BodyPartExamined",
)


class EvaluationError(DicomNodeError):
    """The labelled set cannot be evaluated (no studies, no references, bad CSV)."""


@dataclass
class _Study:
    uid: str
    series: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    segs: list[Path] = field(default_factory=list)
    strata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KeySlice:
    """One slice of a case for the worst-case thumbnails."""

    image: NDArray[np.float32]
    prediction: NDArray[np.bool_]
    reference: NDArray[np.bool_]
    index: int


@dataclass
class Evaluation:
    """Everything :func:`evaluate` measured.

    Attributes
    ----------
    metrics : dict
        Every number, as written to ``metrics.json``.
    key_slices : dict
        ``(study UID, structure)`` to the slice where prediction and reference
        disagree most, for thumbnails.
    """

    metrics: dict[str, Any]
    key_slices: dict[tuple[str, str], KeySlice]


def _scan(root: Path) -> dict[str, _Study]:
    studies: dict[str, _Study] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        uid = str(ds.get("StudyInstanceUID", ""))
        if not uid:
            continue
        study = studies.setdefault(uid, _Study(uid))
        if str(ds.get("Modality", "")) == "SEG":
            study.segs.append(path)
            continue
        study.series[str(ds.get("SeriesInstanceUID", ""))].append(path)
        if not study.strata:
            for keyword in STRATA:
                value = ds.get(keyword)
                study.strata[keyword] = str(value).strip() if value not in (None, "") else "-"
    return studies


def _read_labels(path: Path) -> dict[str, list[tuple[str, int]]]:
    labels: dict[str, list[tuple[str, int]]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"StudyInstanceUID", "label"} - set(reader.fieldnames or ())
        if missing:
            raise EvaluationError(f"{path}: no column {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            try:
                value = int(row["label"])
            except ValueError as exc:
                raise EvaluationError(f"{path} line {line}: label must be 0 or 1") from exc
            if value not in (0, 1):
                raise EvaluationError(f"{path} line {line}: label must be 0 or 1")
            labels[row["StudyInstanceUID"].strip()].append(
                ((row.get("finding") or "").strip(), value)
            )
    return labels


def _reference_masks(
    seg_paths: Sequence[Path], volume: Volume
) -> dict[tuple[str, str], tuple[str, NDArray[np.bool_]]]:
    """(code value, scheme) to (segment label, mask in the volume's grid)."""
    import highdicom as hd

    masks: dict[tuple[str, str], tuple[str, NDArray[np.bool_]]] = {}
    sources = [s.sop_instance_uid for s in volume.sources]
    for path in seg_paths:
        seg = hd.seg.segread(path)
        referenced = {
            str(item.ReferencedSOPInstanceUID)
            for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        if not referenced & set(sources):
            continue
        for item in seg.SegmentSequence:
            code = item.SegmentedPropertyTypeCodeSequence[0]
            key = (str(code.CodeValue), str(code.CodingSchemeDesignator))
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=sources,
                segment_numbers=[int(item.SegmentNumber)],
                assert_missing_frames_are_empty=True,
            )
            masks[key] = (str(item.SegmentLabel), np.asarray(pixels[..., 0]) > 0)
    return masks


def _key_slice(
    volume: Volume, prediction: NDArray[np.bool_], reference: NDArray[np.bool_]
) -> KeySlice:
    disagreement = (prediction ^ reference).sum(axis=(1, 2))
    index = int(np.argmax(disagreement if disagreement.any() else reference.sum(axis=(1, 2))))
    return KeySlice(volume.array[index].copy(), prediction[index], reference[index], index)


def _summary(values: Sequence[float | None]) -> dict[str, Any]:
    kept = [v for v in values if v is not None]
    return {
        "mean": mean_of(kept),
        "median": float(np.median(kept)) if kept else None,
        "ci95": bootstrap_ci(kept, lambda s: float(np.mean(s))),
        "n": len(kept),
    }


def evaluate(
    root: Path,
    pipeline_name: str,
    *,
    labels_csv: Path | None = None,
    plugins: Sequence[str] = (),
    models_dir: Path = Path("models"),
    options: dict[str, dict[str, object]] | None = None,
    tolerance_mm: float = 2.0,
    threshold: float | None = None,
) -> Evaluation:
    """Run every study under ``root`` through ``pipeline_name`` and score it.

    Parameters
    ----------
    root : Path
        The labelled set.
    pipeline_name : str
        A pipeline the registry knows.
    labels_csv : Path, optional
        Labels per study (classifiers); default ``root/labels.csv`` when it exists.
    plugins, models_dir, options
        As the node's ``runner`` config gives them.
    tolerance_mm : float
        Surface Dice tolerance.
    threshold : float, optional
        Decision threshold; default the one the pipeline's finding carries.

    Returns
    -------
    Evaluation

    Raises
    ------
    EvaluationError
        No study with a reference (SEG or label) under ``root``.
    """
    studies = _scan(root)
    if labels_csv is None and (root / "labels.csv").is_file():
        labels_csv = root / "labels.csv"
    labels = _read_labels(labels_csv) if labels_csv is not None else {}
    worker = Worker(
        WorkerSettings(
            device="cpu",
            threads=1,
            plugins=tuple(plugins),
            models_dir=str(models_dir.resolve()),
            options=options or {},
        )
    )
    pipeline = worker.pipeline(pipeline_name)
    cases: list[dict[str, Any]] = []
    key_slices: dict[tuple[str, str], KeySlice] = {}
    scored: list[dict[str, Any]] = []
    names: dict[tuple[str, str], str] = {}  # reference code to the pipeline's structure name
    missing: list[
        tuple[dict[str, Any], tuple[str, str], str, tuple[float, float, float], float, Any]
    ] = []
    for uid, study in sorted(studies.items()):
        if not study.series or not (study.segs or uid in labels):
            continue
        files = max(study.series.values(), key=len)
        case: dict[str, Any] = {"study_uid": uid, "strata": study.strata}
        cases.append(case)
        try:
            volume = load_series(files)
            check_input(pipeline.name, pipeline.input, volume)
            result = pipeline.run(volume, worker.device)
            result.check_grid(volume)
            references = _reference_masks(study.segs, volume) if study.segs else {}
        except (DicomNodeError, InputRefused) as exc:
            case["error"] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - one study's failure is reported, not fatal
            case["error"] = f"{type(exc).__name__}: {exc}"
            continue
        if study.segs:
            structures: dict[str, Any] = {}
            for segment in result.segments:
                key = (segment.type.value, segment.type.scheme)
                if key not in references:
                    continue
                name, reference = references.pop(key)
                names[key] = segment.name
                assert result.label_map is not None
                prediction = result.label_map == segment.label
                structures[segment.name] = {
                    "code": f"{key[0]} ({key[1]}) {segment.type.meaning}",
                    "reference_segment": name,
                    **segmentation_metrics(
                        prediction, reference, volume.spacing, volume.voxel_volume_ml, tolerance_mm
                    ),
                }
                key_slices[(uid, segment.name)] = _key_slice(volume, prediction, reference)
            case["structures"] = structures
            for key, (name, reference) in references.items():
                empty = np.zeros_like(reference)
                missing.append((case, key, name, volume.spacing, volume.voxel_volume_ml, reference))
                key_slices[(uid, name)] = _key_slice(volume, empty, reference)
        # a labels CSV beside reference SEGs is for classifiers: a pipeline that
        # reports no finding at all is scored on its segments alone
        if uid in labels and (result.findings or not study.segs):
            findings = []
            for wanted, value in labels[uid]:
                match = [
                    f
                    for f in result.findings
                    if not wanted or wanted in (f.concept.value, f.concept.meaning)
                ]
                if not match:
                    case["error"] = f"the pipeline reported no finding {wanted or ''}".strip()
                    break
                finding = match[0]
                cut = threshold if threshold is not None else finding.threshold
                findings.append(
                    {
                        "finding": finding.concept.meaning,
                        "label": value,
                        "probability": finding.probability,
                        "threshold": cut,
                    }
                )
            case["findings"] = findings
        if "error" in case:
            continue
        scored.append(case)
    for case, key, name, spacing, voxel_ml, reference in missing:
        if key not in names:
            # no study's result has this structure: not something the pipeline makes
            case.setdefault("unmatched_references", []).append(f"{name} ({key[0]}, {key[1]})")
            continue
        # the pipeline makes this structure but found none here: scored as missed
        case["structures"][names[key]] = {
            "code": f"{key[0]} ({key[1]})",
            "reference_segment": name,
            "missed": True,
            **segmentation_metrics(
                np.zeros_like(reference), reference, spacing, voxel_ml, tolerance_mm
            ),
        }
        key_slices[(case["study_uid"], names[key])] = key_slices.pop((case["study_uid"], name))
    if not cases:
        raise EvaluationError(
            f"no study under {root} has a reference SEG or a label; nothing to evaluate"
        )
    metrics: dict[str, Any] = {
        "pipeline": {"name": pipeline.name, "version": pipeline.version},
        "set": {"studies": len(cases), "scored": len(scored), "errors": len(cases) - len(scored)},
        "settings": {"surface_dice_tolerance_mm": tolerance_mm, "device": worker.device},
        "cases": cases,
    }
    metrics["segmentation"] = _segmentation_summary(scored)
    metrics["classification"] = _classification_summary(scored)
    return Evaluation(metrics, key_slices)


_SEGMENTATION_KEYS = (
    "dice",
    "hd95_mm",
    "asd_mm",
    "surface_dice",
    "volume_error_ml",
    "volume_error_pct",
)


def _segmentation_summary(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    per_structure: dict[str, Any] = {}
    names = sorted({name for case in cases for name in case.get("structures", {})})
    for name in names:
        rows = [
            (case, case["structures"][name]) for case in cases if name in case.get("structures", {})
        ]
        entry: dict[str, Any] = {
            key: _summary([row[key] for _, row in rows]) for key in _SEGMENTATION_KEYS
        }
        strata: dict[str, Any] = {}
        for keyword in STRATA:
            groups: dict[str, list[float | None]] = defaultdict(list)
            for case, row in rows:
                groups[case["strata"][keyword]].append(row["dice"])
            strata[keyword] = {value: {"dice": _summary(v)} for value, v in sorted(groups.items())}
        entry["strata"] = strata
        per_structure[name] = entry
    return per_structure


def _classification_summary(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_finding: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for case in cases:
        for item in case.get("findings", ()):
            by_finding[item["finding"]].append((case, item))
    out: dict[str, Any] = {}
    for name, rows in sorted(by_finding.items()):
        thresholds = {item["threshold"] for _, item in rows}
        if None in thresholds or len(thresholds) != 1:
            raise EvaluationError(
                f"finding {name!r} has no single decision threshold; give one with --threshold"
            )
        threshold = float(thresholds.pop())
        labels = [int(item["label"]) for _, item in rows]
        probabilities = [float(item["probability"]) for _, item in rows]
        entry = classification_metrics(labels, probabilities, threshold)
        entry["roc"] = roc_band(labels, probabilities)
        strata: dict[str, Any] = {}
        for keyword in STRATA:
            groups: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for (case, _), label, p in zip(rows, labels, probabilities, strict=True):
                groups[case["strata"][keyword]].append((label, p))
            strata[keyword] = {
                value: {
                    key: metric
                    for key, metric in classification_metrics(
                        [g[0] for g in group], [g[1] for g in group], threshold, with_ci=False
                    ).items()
                    if key in ("n", "positives", "auc", "sensitivity", "specificity")
                }
                for value, group in sorted(groups.items())
            }
        entry["strata"] = strata
        out[name] = entry
    return out
