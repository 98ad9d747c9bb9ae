"""What the result writer checks before it builds anything.

Everything the writer makes is a pure function of the result and the source
headers, so a fault it can see in them is permanent: the same input would
meet it on every retry. It is refused at once with a
:class:`~dicomnode.errors.ResultError` naming what is missing, and the run
ends DEAD with that reason instead of being retried.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from dicomnode.errors import ResultError
from dicomnode.protocol import PipelineResult, Volume

__all__ = ["CROSS_SECTIONAL_MODALITIES", "check_writable"]

CROSS_SECTIONAL_MODALITIES = frozenset({"CT", "MR", "PT"})
"""Modalities whose image IODs require a Frame of Reference: a segmentation of
one of their images, even of a single slice, must name it."""

_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient")


def _frame_of_reference(ds: Dataset) -> str:
    return str(ds.get("FrameOfReferenceUID", "") or "").strip()


def check_writable(result: PipelineResult, volume: Volume, sources: Sequence[Dataset]) -> None:
    """Refuse, before anything is built, sources the objects cannot be made from.

    A segmentation (a label map) or a heatmap lies in the source geometry, so
    it needs the sources' Frame of Reference UID when the volume has more than
    one slice, when its images carry patient geometry (Image Position /
    Orientation (Patient)), or when their modality requires one (CT, MR, PT).
    A single projection radiograph (CR, DX) needs none. Every source must
    name the same Frame of Reference.

    Parameters
    ----------
    result : PipelineResult
        What the pipeline returned.
    volume : Volume
        The input volume.
    sources : sequence of Dataset
        The source datasets in volume order.

    Raises
    ------
    ResultError
        Naming what the sources lack; permanent.
    """
    spatial = (
        (result.label_map is not None and bool(result.segments))
        or bool(result.heatmaps)
        or bool(result.detections)
    )
    if not spatial or not sources:
        return
    uids = {_frame_of_reference(ds) for ds in sources}
    if len(uids) > 1:
        raise ResultError(
            f"the source images name {len(uids)} different Frame of Reference UIDs; "
            "a segmentation must lie in one"
        )
    if uids != {""}:
        return
    first = sources[0]
    modality = str(first.get("Modality", "") or volume.modality).upper()
    why = (
        f"the volume has {len(volume.sources)} slices"
        if len(volume.sources) > 1
        else f"a {modality} image needs one"
        if modality in CROSS_SECTIONAL_MODALITIES
        else "the images carry patient geometry"
        if any(keyword in first for keyword in _GEOMETRY)
        else ""
    )
    if why:
        raise ResultError(
            "the source images have no Frame of Reference UID (0020,0052): a segmentation or "
            f"heatmap cannot be placed in their geometry without one ({why}); fix the series "
            "at the modality and send it again"
        )
