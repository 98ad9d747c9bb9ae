"""Scoring the node's SEGs against radiologists' corrections of them.

The routing stage recognises a received SEG that corrects one the node wrote
(:mod:`dicomnode.routing.corrections`), keeps it out of the pipelines and
records it PENDING. :class:`CorrectionScorer` then compares, per segment, the
node's SEG with the corrected one on the source images both reference:

- segments are matched by their Segmented Property Type code (then by
  label), so a viewer that renumbers them is no obstacle;
- ``dice``: the Dice coefficient of the node's mask against the corrected
  one (MONAI's ``DiceMetric``), 1.0 when both are empty;
- ``volume_ml`` / ``corrected_volume_ml``: voxels times the voxel volume of
  the node's SEG (its Pixel Measures: pixel spacing and slice thickness);
  ``volume_difference_ml`` is corrected minus ours, and
  ``volume_difference_pct`` that relative to ours.

A segment the radiologist deleted scores against an empty mask (Dice 0.0,
unless ours was empty too). Scoring only reads the two files: it never
changes a result.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from apscheduler.schedulers.background import BackgroundScheduler
from numpy.typing import NDArray
from pydicom import dcmread

from dicomnode.errors import JobStoreError
from dicomnode.jobs.ports import CorrectionSource
from dicomnode.logs import escape
from dicomnode.monitoring.metrics import dice
from dicomnode.scheduling import every

__all__ = ["CorrectionScorer", "CorrectionSource", "score_correction"]

LOGGER = logging.getLogger(__name__)


def _segment_keys(seg: hd.seg.Segmentation) -> dict[str, int]:
    """Segment number by a key: the property type code, else the label."""
    keys: dict[str, int] = {}
    for number in seg.get_segment_numbers():
        description = seg.get_segment_description(number)
        kind = description.segmented_property_type
        key = f"{kind.scheme_designator}:{kind.value}" if kind is not None else ""
        keys.setdefault(key or f"label:{description.segment_label}", number)
    return keys


def _masks(seg: hd.seg.Segmentation, sources: list[str], number: int | None) -> NDArray[np.bool_]:
    """The segment's mask on ``sources`` (empty frames where it has none)."""
    known = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    rows, columns = int(seg.Rows), int(seg.Columns)
    mask = np.zeros((len(sources), rows, columns), dtype=bool)
    if number is None:
        return mask
    present = [i for i, uid in enumerate(sources) if uid in known]
    if present:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[sources[i] for i in present],
            segment_numbers=[number],
            assert_missing_frames_are_empty=True,
        )
        mask[present] = pixels[..., 0] > 0
    return mask


def _voxel_ml(seg: hd.seg.Segmentation) -> float | None:
    try:
        measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        row, column = (float(v) for v in measures.PixelSpacing)
        thickness = float(measures.SliceThickness)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    return row * column * thickness / 1000.0


def score_correction(ours_path: Path, corrected_path: Path) -> dict[str, Any]:
    """Compare the node's SEG with a radiologist's correction of it.

    Parameters
    ----------
    ours_path, corrected_path : Path
        The node's SEG and the corrected SEG.

    Returns
    -------
    dict
        ``{"segments": {label: {"dice", "voxels", "corrected_voxels",
        "volume_ml", "corrected_volume_ml", "volume_difference_ml",
        "volume_difference_pct"}}, "frames": n}``, one entry per segment of
        ours and per segment only the correction has; volumes are ``None``
        when our SEG gives no pixel measures.

    Raises
    ------
    ValueError
        A file is no readable SEG, or the two differ in image size.
    """
    ours = hd.seg.Segmentation.from_dataset(dcmread(ours_path))
    theirs = hd.seg.Segmentation.from_dataset(dcmread(corrected_path))
    if (int(ours.Rows), int(ours.Columns)) != (int(theirs.Rows), int(theirs.Columns)):
        raise ValueError("the corrected SEG's frames differ in size from the node's")
    sources = list(dict.fromkeys(str(uid) for _, _, uid in ours.get_source_image_uids()))
    voxel_ml = _voxel_ml(ours)
    our_keys, their_keys = _segment_keys(ours), _segment_keys(theirs)
    segments: dict[str, dict[str, float | int | None]] = {}
    for key in [*our_keys, *(k for k in their_keys if k not in our_keys)]:
        number, other = our_keys.get(key), their_keys.get(key)
        label = (
            ours.get_segment_description(number).segment_label
            if number is not None
            else theirs.get_segment_description(other).segment_label  # type: ignore[arg-type]
        )
        a = _masks(ours, sources, number)
        b = _masks(theirs, sources, other)
        voxels, corrected = int(a.sum()), int(b.sum())
        volume = None if voxel_ml is None else voxels * voxel_ml
        corrected_volume = None if voxel_ml is None else corrected * voxel_ml
        difference = (
            None if volume is None or corrected_volume is None else corrected_volume - volume
        )
        segments[str(label)] = {
            "dice": dice(a, b),
            "voxels": voxels,
            "corrected_voxels": corrected,
            "volume_ml": volume,
            "corrected_volume_ml": corrected_volume,
            "volume_difference_ml": difference,
            "volume_difference_pct": (
                None if difference is None or not volume else 100.0 * difference / volume
            ),
        }
    return {"segments": segments, "frames": len(sources)}


class CorrectionScorer:
    """Scores every PENDING correction, every ``poll_seconds``.

    Parameters
    ----------
    store : CorrectionSource
        The job store.
    poll_seconds : float
        Between two passes.
    """

    JOB_ID = "dicomnode-corrections"

    def __init__(self, store: CorrectionSource, poll_seconds: float) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self._scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Score now, then every ``poll_seconds``."""
        self._scheduler = every(self.poll_seconds, self.run_once, self.JOB_ID)

    def stop(self) -> None:
        """Stop scoring (waits for a pass in progress)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def run_once(self) -> int:
        """Score every PENDING correction; return how many were recorded
        (SCORED, or FAILED with the reason when a file cannot be compared)."""
        done = 0
        with self._lock:
            try:
                pending = self.store.corrections(pending=True)
            except JobStoreError as exc:
                LOGGER.warning("correction scoring skipped: %s", exc)
                return 0
            for row in pending:
                correction_id = int(str(row["id"]))
                try:
                    scores = score_correction(Path(str(row["seg_path"])), Path(str(row["path"])))
                except (OSError, ValueError, AttributeError, KeyError, IndexError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    self._record(correction_id, "FAILED", None, reason)
                    LOGGER.warning("correction %d not scored: %s", correction_id, reason)
                else:
                    self._record(correction_id, "SCORED", json.dumps(scores), None)
                    LOGGER.info(
                        "correction %d of job %s scored: %s",
                        correction_id,
                        row["job_id"],
                        ", ".join(
                            f"{escape(name, 64)} Dice {values['dice']:.3f}"
                            for name, values in scores["segments"].items()
                        ),
                    )
                done += 1
        return done

    def _record(
        self, correction_id: int, state: str, scores: str | None, reason: str | None
    ) -> None:
        try:
            self.store.score_correction(correction_id, state, scores, reason)
        except JobStoreError as exc:
            LOGGER.warning("correction %d: score not kept: %s", correction_id, exc)
