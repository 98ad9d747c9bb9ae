"""A preview image of a written result: what the PACS got, at a glance.

:func:`render_preview` takes a run's outbox folder (the objects the result
writer made: SEG, SR, overlays, parametric maps), the source instances, and
optionally the run's result folder, and returns one PNG:

* **With a SEG** (e.g. ``ct-lung``): the *key slice* is the source image with
  the most segmented pixels (ties: the first in the volume). Its grey values
  are the source's stored values through the Modality LUT and the source's VOI
  window (Window Center/Width with its VOI LUT Function, as a viewer shows
  them; without one, the slice's 1st to 99th percentile); ``MONOCHROME1`` is
  inverted. Each segment is drawn in its *Recommended Display CIELab Value*
  converted to RGB: its pixels blended :data:`FILL_ALPHA` towards that colour,
  its outline (the mask's pixels with a neighbour outside it) in the colour
  itself. A later segment is drawn over an earlier one. Every pixel outside
  all segments keeps its grey value (R = G = B).
* **With a heatmap** (e.g. ``cxr-classify`` on a radiograph) and no SEG: the
  heat comes from the Parametric Map in the outbox, or, for sources without
  a frame of reference (projection radiographs get no map), from the result
  folder's ``heatmap-<i>.npy``. The key slice is the one with the most heat;
  where the heat exceeds :data:`HEAT_THRESHOLD` a red-to-yellow ramp is
  blended in, with an opacity that grows with the heat up to
  :data:`MAX_ALPHA`; elsewhere the image stays grey.

Nothing of the patient is drawn or returned: the PNG holds pixels only (no
text, no metadata chunks). It is a preview for people who look after the
node, not an image for diagnosis.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut

from dicomnode.errors import ResultError
from dicomnode.jobs import InstanceRecord, Job, Run
from dicomnode.resultfile import RESULT_JSON

__all__ = [
    "FILL_ALPHA",
    "HEAT_THRESHOLD",
    "MAX_ALPHA",
    "Preview",
    "grey",
    "preview_image",
    "render_job_preview",
    "render_preview",
    "study_runs",
]

#: How far a segment's pixels are blended towards its colour.
FILL_ALPHA = 0.45
#: Heat below this is not drawn.
HEAT_THRESHOLD = 0.1
#: Opacity of the heat colour at heat 1.
MAX_ALPHA = 0.6
#: The fallback window, in percentiles of the slice.
PERCENTILE_WINDOW = (1.0, 99.0)

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP_CLASS = "1.2.840.10008.5.1.4.1.1.30"

#: A source frame: SOP Instance UID and frame number (``None``: single frame).
FrameKey = tuple[str, int | None]


@dataclass(frozen=True)
class Preview:
    """A rendered preview.

    Attributes
    ----------
    rgb : ndarray
        uint8 (rows, columns, 3).
    source : tuple of (str, int or None)
        The key slice's SOP Instance UID and frame number.
    kind : str
        ``segmentation`` or ``heatmap``.
    """

    rgb: NDArray[np.uint8]
    source: FrameKey
    kind: str

    def png(self) -> bytes:
        """The image as PNG bytes."""
        buffer = io.BytesIO()
        Image.fromarray(self.rgb, mode="RGB").save(buffer, format="PNG")
        return buffer.getvalue()


def render_preview(
    outbox: Path, sources: Sequence[Path], *, result_dir: Path | None = None
) -> bytes:
    """A PNG of a written result's key slice; see the module's description.

    Parameters
    ----------
    outbox : Path
        The run's outbox folder (``<spool>/outbox/job-<id>``).
    sources : sequence of Path
        The source instances (the run's input series).
    result_dir : Path, optional
        The run's result folder (``<data_dir>/results/job-<id>``): the heat of
        a radiograph, which gets no Parametric Map, is read from it.

    Returns
    -------
    bytes
        The PNG.

    Raises
    ------
    ResultError
        Nothing to show (no SEG, no heatmap), or the objects name source
        instances that are not among ``sources``.
    """
    return preview_image(outbox, sources, result_dir=result_dir).png()


def preview_image(
    outbox: Path, sources: Sequence[Path], *, result_dir: Path | None = None
) -> Preview:
    """As :func:`render_preview`, but the image as an array with what it shows.

    Raises
    ------
    ResultError
        As :func:`render_preview`.
    """
    images = _read_sources(sources)
    objects = _read_objects(outbox)
    segmentations = [ds for ds in objects if ds.SOPClassUID == SEG_CLASS]
    if segmentations:
        return _segmentation_preview(segmentations[0], images)
    maps = [ds for ds in objects if ds.SOPClassUID == PARAMETRIC_MAP_CLASS]
    heat = _map_heat(maps[0]) if maps else _result_heat(result_dir)
    if heat:
        return _heat_preview(heat, images)
    raise ResultError(f"{outbox}: no segmentation and no heatmap to preview")


class RunReader(Protocol):
    """The job store verbs a run's preview reads."""

    def get_job(self, job_id: int) -> Job: ...

    def jobs(self, *, study_instance_uid: str | None = None) -> list[Job]: ...

    def instances_of(self, job_id: int) -> list[InstanceRecord]: ...


def study_runs(store: RunReader, study_instance_uid: str) -> list[Run]:
    """The study's runs that wrote results, newest first."""
    runs = [
        job
        for job in store.jobs(study_instance_uid=study_instance_uid)
        if isinstance(job, Run) and job.outbox_dir is not None and job.purged_at is None
    ]
    return sorted(runs, key=lambda job: job.id, reverse=True)


def render_job_preview(store: RunReader, job_id: int) -> bytes:
    """The PNG preview of run ``job_id``'s written result, as the node keeps it.

    Parameters
    ----------
    store : RunReader
        The job store: the run's outbox and result folders, its input series.
    job_id : int
        A run that wrote results.

    Returns
    -------
    bytes
        The PNG.

    Raises
    ------
    ResultError
        The run wrote no objects (yet), retention removed them, or there is
        nothing to show.
    """
    job = store.get_job(job_id)
    if not isinstance(job, Run):
        raise ResultError(f"job {job_id} is a study's round, not a run")
    if job.purged_at is not None:
        raise ResultError(f"job {job_id}: its files were purged by retention")
    if job.outbox_dir is None:
        raise ResultError(f"job {job_id} has written no result objects ({job.state})")
    sources = [
        Path(record.path)
        for record in store.instances_of(job.parent_id)
        if record.series_instance_uid == job.series_instance_uid
    ]
    result_dir = Path(job.result_dir) if job.result_dir else None
    return render_preview(Path(job.outbox_dir), sources, result_dir=result_dir)


# --- reading ---------------------------------------------------------------------------------


def _read_sources(paths: Sequence[Path]) -> dict[FrameKey, tuple[Dataset, int]]:
    """Each source frame by key, with its dataset and 0-based frame index."""
    frames: dict[FrameKey, tuple[Dataset, int]] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError) as exc:
            raise ResultError(f"cannot read the source {path}: {exc}") from exc
        uid = str(ds.SOPInstanceUID)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        if count == 1:
            frames[(uid, None)] = (ds, 0)
            frames[(uid, 1)] = (ds, 0)
        else:
            for index in range(count):
                frames[(uid, index + 1)] = (ds, index)
    return frames


def _read_objects(outbox: Path) -> list[Dataset]:
    if not outbox.is_dir():
        raise ResultError(f"no result objects at {outbox}")
    found: list[Dataset] = []
    for path in sorted(outbox.glob("*.dcm")):
        try:
            found.append(pydicom.dcmread(path))
        except (InvalidDicomError, OSError) as exc:
            raise ResultError(f"cannot read the result object {path}: {exc}") from exc
    return found


def _frame_source(frame: Dataset) -> FrameKey:
    """The source image a SEG or Parametric Map frame was derived from."""
    derivation = frame.DerivationImageSequence[0]
    source = derivation.SourceImageSequence[0]
    number = source.get("ReferencedFrameNumber")
    if isinstance(number, pydicom.multival.MultiValue):
        number = number[0]
    return str(source.ReferencedSOPInstanceUID), None if number is None else int(number)


def _segment_colours(seg: Dataset) -> dict[int, tuple[int, int, int]]:
    colours: dict[int, tuple[int, int, int]] = {}
    defaults = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48))
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        value = item.get("RecommendedDisplayCIELabValue")
        if value is not None:
            colours[number] = hd.color.CIELabColor.from_dicom_value(list(value)).to_rgb(clip=True)
        else:
            colours[number] = defaults[(number - 1) % len(defaults)]
    return colours


def _segment_masks(seg: Dataset) -> dict[FrameKey, dict[int, NDArray[np.bool_]]]:
    """Per source frame, the mask of each segment with pixels on it."""
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[None]
    masks: dict[FrameKey, dict[int, NDArray[np.bool_]]] = {}
    shared = seg.get("SharedFunctionalGroupsSequence")
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = frame.get("SegmentIdentificationSequence")
        if identification is None and shared is not None:
            identification = shared[0].get("SegmentIdentificationSequence")
        number = int(identification[0].ReferencedSegmentNumber)
        key = _frame_source(frame)
        mask = pixels[index] > 0
        per_frame = masks.setdefault(key, {})
        per_frame[number] = per_frame[number] | mask if number in per_frame else mask
    return masks


def _map_heat(pmap: Dataset) -> dict[FrameKey, NDArray[np.float32]]:
    values = np.asarray(pmap.pixel_array, dtype=np.float32)
    if values.ndim == 2:
        values = values[None]
    return {
        _frame_source(frame): values[index]
        for index, frame in enumerate(pmap.PerFrameFunctionalGroupsSequence)
    }


def _result_heat(result_dir: Path | None) -> dict[FrameKey, NDArray[np.float32]]:
    """The first heatmap of a saved result, by source frame."""
    if result_dir is None or not (result_dir / "heatmap-0.npy").exists():
        return {}
    document: dict[str, Any] = json.loads((result_dir / RESULT_JSON).read_text(encoding="utf-8"))
    heat = np.load(result_dir / "heatmap-0.npy")
    found: dict[FrameKey, NDArray[np.float32]] = {}
    for index, source in enumerate(document["volume"]["sources"]):
        key = (str(source["sop_instance_uid"]), source.get("frame_number"))
        found[key] = np.asarray(heat[index], dtype=np.float32)
    return found


# --- drawing ---------------------------------------------------------------------------------


def _source_frame(images: dict[FrameKey, tuple[Dataset, int]], key: FrameKey) -> Dataset:
    if key not in images:
        raise ResultError(f"the source instance {key[0]} is not among the sources given")
    return images[key][0]


def grey(ds: Dataset, frame_index: int = 0) -> NDArray[np.uint8]:
    """A source frame as a viewer shows it, in 0..255.

    Stored values through the Modality LUT and the VOI window (the 1st to
    99th percentile of the frame without one); ``MONOCHROME1`` inverted.

    Parameters
    ----------
    ds : Dataset
        The source image, with its pixel data.
    frame_index : int
        0-based frame of a multi-frame image.

    Returns
    -------
    ndarray
        uint8 (rows, columns).
    """
    array = np.asarray(ds.pixel_array)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        array = array[frame_index]
    values = np.asarray(apply_modality_lut(array, ds), dtype=np.float64)
    window = _window(ds, frame_index)
    if window is None:
        low, high = np.percentile(values, PERCENTILE_WINDOW)
        unit = (values - low) / max(float(high - low), 1e-6)
    else:
        center, width, function = window
        if function == "SIGMOID":
            unit = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
        elif function == "LINEAR_EXACT":
            unit = (values - center) / width + 0.5
        elif width <= 1.0:
            unit = (values > center - 0.5).astype(np.float64)
        else:
            unit = (values - (center - 0.5)) / (width - 1.0) + 0.5
    out: NDArray[np.uint8] = np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = np.subtract(255, out, dtype=np.uint8)
    return out


def _number(value: object) -> float | None:
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _window(ds: Dataset, frame_index: int) -> tuple[float, float, str] | None:
    """(center, width, VOI LUT function) of the frame's first usable window:
    top level, then the frame's functional groups, then the shared ones."""
    holders: list[Dataset] = [ds]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame_index < len(per_frame):
        holders.extend(per_frame[frame_index].get("FrameVOILUTSequence") or [])
    for shared in ds.get("SharedFunctionalGroupsSequence") or []:
        holders.extend(shared.get("FrameVOILUTSequence") or [])
    for holder in holders:
        center = _number(holder.get("WindowCenter"))
        width = _number(holder.get("WindowWidth"))
        if center is None or width is None or width <= 0:
            continue
        function = str(holder.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            function = "LINEAR"
        return center, width, function
    return None


def _outline(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The mask's pixels with a 4-neighbour outside it (or on the image's edge)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~inner


def _segmentation_preview(seg: Dataset, images: dict[FrameKey, tuple[Dataset, int]]) -> Preview:
    masks = _segment_masks(seg)
    if not masks:
        raise ResultError("the segmentation has no frame to preview")
    colours = _segment_colours(seg)
    order = list(images)

    def weight(key: FrameKey) -> tuple[int, int]:
        area = int(sum(int(m.sum()) for m in masks[key].values()))
        position = order.index(key) if key in images else len(order)
        return -area, position

    key = min(masks, key=weight)
    ds = _source_frame(images, key)
    base = grey(ds, images[key][1])
    rgb = np.repeat(base[..., None], 3, axis=-1).astype(np.float64)
    for number in sorted(masks[key]):
        mask = masks[key][number]
        if mask.shape != base.shape:
            raise ResultError(
                f"segment {number}'s frame is {mask.shape}, its source image {base.shape}"
            )
        colour = np.asarray(colours.get(number, (255, 0, 0)), dtype=np.float64)
        rgb[mask] = rgb[mask] * (1.0 - FILL_ALPHA) + colour * FILL_ALPHA
        rgb[_outline(mask)] = colour
    return Preview(np.rint(rgb).clip(0, 255).astype(np.uint8), key, "segmentation")


def _heat_preview(
    heat: dict[FrameKey, NDArray[np.float32]], images: dict[FrameKey, tuple[Dataset, int]]
) -> Preview:
    order = list(images)

    def weight(key: FrameKey) -> tuple[float, int]:
        values = np.nan_to_num(heat[key])
        return -float(values.max()), order.index(key) if key in images else len(order)

    key = min(heat, key=weight)
    ds = _source_frame(images, key)
    base = grey(ds, images[key][1])
    values = np.clip(np.nan_to_num(heat[key]), 0.0, 1.0)
    if values.shape != base.shape:
        raise ResultError(f"the heatmap is {values.shape}, its source image {base.shape}")
    drawn = values > HEAT_THRESHOLD
    alpha = np.where(drawn, MAX_ALPHA * values, 0.0)[..., None]
    ramp = np.clip((values - HEAT_THRESHOLD) / (1.0 - HEAT_THRESHOLD), 0.0, 1.0)
    colour = np.stack([np.full_like(ramp, 255.0), 255.0 * ramp, np.zeros_like(ramp)], axis=-1)
    rgb = np.repeat(base[..., None], 3, axis=-1).astype(np.float64)
    blended = rgb * (1.0 - alpha) + colour * alpha
    out = np.rint(blended).clip(0, 255).astype(np.uint8)
    out[~drawn] = np.repeat(base[..., None], 3, axis=-1)[~drawn]
    return Preview(out, key, "heatmap")
