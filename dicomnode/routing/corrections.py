"""Recognising a radiologist's correction of a SEG the node wrote.

A viewer that lets a radiologist fix the node's segmentation saves the fixed
one as a new SEG (often with new SOP and Series Instance UIDs) and sends it
back. It is ground truth for the node's result, not a study to run a
pipeline on: the routing stage keeps it out of the pipelines and records it
for scoring (:mod:`dicomnode.monitoring.corrections`).

A received SEG corrects one of ours when its references (the Referenced
Series Sequence and its Referenced Instance Sequence, Source Image and
Derivation Image Sequences, anywhere in the dataset) name

- our SEG's SOP Instance UID, or
- our SEG's series *and* the series our SEG was made from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = ["SEGMENTATION_STORAGE", "Correction", "find_correction", "references"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
"""SOP Class UID of Segmentation Storage."""


@dataclass(frozen=True)
class Correction:
    """A received SEG matched to a SEG the node wrote.

    Attributes
    ----------
    job_id : int
        The run that wrote our SEG.
    pipeline : str
    seg_sop_instance_uid : str
        Our SEG.
    seg_path : str
        Our SEG's file (in the outbox).
    matched_by : str
        ``sop_instance_uid`` or ``series``.
    """

    job_id: int
    pipeline: str
    seg_sop_instance_uid: str
    seg_path: str
    matched_by: str


def references(ds: Dataset) -> tuple[set[str], set[str]]:
    """Every SOP Instance UID and Series Instance UID a dataset references.

    Walks every sequence of ``ds`` (its own UIDs at the top level are not
    references): ``ReferencedSOPInstanceUID`` and ``SeriesInstanceUID``
    values inside any item.

    Returns
    -------
    (set of str, set of str)
        Referenced SOP Instance UIDs, referenced Series Instance UIDs.
    """
    sops: set[str] = set()
    series: set[str] = set()

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            for element in item:
                if element.VR == "SQ":
                    walk(element.value)
                elif element.keyword == "ReferencedSOPInstanceUID" and element.value:
                    sops.add(str(element.value).strip())
                elif element.keyword == "SeriesInstanceUID" and element.value:
                    series.add(str(element.value).strip())

    for element in ds:
        if element.VR == "SQ":
            walk(element.value)
    return sops, series


Lookup = Callable[[Sequence[str], Sequence[str]], list[dict[str, object]]]
"""The job store's ``written_segmentations``: our SEGs by SOP or series UID."""


def find_correction(path: Path, lookup: Lookup) -> Correction | None:
    """The SEG of ours that the SEG at ``path`` corrects, if any.

    Parameters
    ----------
    path : Path
        A received instance (read without pixel data).
    lookup : callable
        Our written SEGs with any of the given SOP Instance UIDs or in any of
        the given series (``RoutingStore.written_segmentations``).

    Returns
    -------
    Correction or None
        ``None`` when the file is no SEG, is one of ours sent back (same SOP
        Instance UID), or references none of ours as described above.
    """
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError):
        return None
    if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        return None
    own = str(ds.get("SOPInstanceUID", ""))
    sops, series = references(ds)
    sops.discard(own)
    candidates = lookup(sorted(sops), sorted(series))
    if any(str(c["sop_instance_uid"]) == own for c in lookup([own], [])):
        return None  # our own SEG, sent back
    for candidate in candidates:
        if str(candidate["sop_instance_uid"]) in sops:
            return _correction(candidate, "sop_instance_uid")
    for candidate in candidates:
        if str(candidate["series_instance_uid"]) in series and (
            str(candidate["source_series"]) in series
        ):
            return _correction(candidate, "series")
    return None


def _correction(row: dict[str, object], matched_by: str) -> Correction:
    return Correction(
        job_id=int(str(row["job_id"])),
        pipeline=str(row["pipeline"]),
        seg_sop_instance_uid=str(row["sop_instance_uid"]),
        seg_path=str(row["path"]),
        matched_by=matched_by,
    )
