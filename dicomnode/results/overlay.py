"""Heatmap overlays: Secondary Capture images that every viewer displays.

A finding without a segmentation may come with a heatmap ("where the model
looked"). A viewer cannot show a float array, and not every viewer shows
parametric maps or presentation states, but every PACS viewer shows a
Secondary Capture image. This module turns each heatmap of a
:class:`~dicomnode.protocol.PipelineResult` into RGB Secondary Capture
images (highdicom :class:`highdicom.sc.SCImage`): the source image in grey
with the heatmap blended over it in colour, and a banner burned into the
pixels that says it is a heatmap, not for diagnosis. The wording calls it an
"AI" heatmap only when the pipeline runs a trained model
(:attr:`~dicomnode.protocol.Algorithm.label`; "Automated" otherwise).

What is drawn
-------------
* **Grey.** The source slice (modality rescale already applied by the
  volume) through the source's VOI window (Window Center/Width, top level or
  Frame VOI LUT in the functional groups, with its VOI LUT Function) to
  0..255; without a usable window, through a window from the
  :data:`PERCENTILE_WINDOW` percentiles of the whole volume. ``MONOCHROME1``
  sources are inverted so the overlay looks like the source on screen.
* **Heat.** Values are clipped to 0..1 (NaN counts as 0). Where the heat is
  below :data:`HEAT_THRESHOLD` nothing is drawn, so those pixels stay grey
  (R = G = B). Above it, a red-to-yellow ramp is blended with an opacity
  proportional to the heat (:data:`MAX_ALPHA` at heat 1).
* **Banner.** A black strip *above* the image (no source pixel is hidden)
  with yellow text: :func:`banner_text`, the finding (with its probability
  when the result has that finding), and the pipeline name and version.
* **Size.** Images narrower than :data:`MIN_COLUMNS` are enlarged by a whole
  factor (nearest neighbour) so the banner text stays legible; Pixel Spacing
  is divided by the same factor.

Which objects
-------------
One image per (heatmap, slice with heat): a slice has heat when the
heatmap's maximum on it exceeds :data:`HEAT_THRESHOLD`. A projection image
(one slice) gives one image per heatmap; a volume gives at most
:data:`MAX_SLICES_PER_HEATMAP` per heatmap, the slices with the highest
maximum heat (ties: the larger total heat, then the lower index), in volume
order. A heatmap without heat gives nothing. Each heatmap gets a series of
its own.

Identity
--------
Study, patient and study attributes are those of the source. The series UID
is :func:`~dicomnode.results.uids.derived_uid` of the source series, the
pipeline name and version, ``"overlay"`` and the finding's code; each
instance UID derives from that series UID and the source instance (and
frame), so a re-run of the same pipeline version replaces its earlier
overlays instead of duplicating them (:func:`overlay_series_uid`). Each
overlay series has its own Series Number: the one given for the first
heatmap of the result, plus ``series_number_step`` for each heatmap after
it. Instance Number is the slice's 1-based index in the volume, so a
viewer stacks the images in the source's order.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import unicodedata
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomnode.protocol import (
    Code,
    Finding,
    Heatmap,
    PipelineResult,
    ResultContext,
    SliceSource,
    Volume,
)
from dicomnode.results.common import copy_patient_and_study, series_laterality
from dicomnode.results.uids import derived_uid

__all__ = [
    "BANNER_TEXT",
    "HEAT_THRESHOLD",
    "MAX_ALPHA",
    "MAX_SLICES_PER_HEATMAP",
    "MIN_COLUMNS",
    "PERCENTILE_WINDOW",
    "banner_text",
    "build_overlays",
    "overlay_series_uid",
    "select_slices",
]

LOGGER = logging.getLogger(__name__)

HEAT_THRESHOLD = 0.1
"""Heat at or below this is not drawn, and a slice whose maximum heat does not
exceed it gets no overlay."""

MAX_SLICES_PER_HEATMAP = 64
"""At most this many overlay images per heatmap (the hottest slices)."""

MAX_ALPHA = 0.6
"""Opacity of the colour at heat 1.0; opacity is proportional to the heat."""

MIN_COLUMNS = 256
"""Narrower images are enlarged by a whole factor to at least this width."""

PERCENTILE_WINDOW = (1.0, 99.0)
"""Percentiles of the volume used as the window when the source has none."""

BANNER_TEXT = "{label} HEATMAP - NOT FOR DIAGNOSIS"
"""The first line burned into every overlay, ``{label}`` the algorithm's label
in capitals (see :func:`banner_text`)."""

_BANNER_COLOUR = (255, 255, 0)
_MARGIN = 4
_MIN_FONT_SIZE = 8
_SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
_LO_MAX = 64
_ST_MAX = 1024


def build_overlays(
    result: PipelineResult,
    volume: Volume,
    sources: Sequence[Dataset],
    context: ResultContext,
    *,
    series_number: int = 9003,
    series_number_step: int = 1,
) -> list[Dataset]:
    """Build one Secondary Capture overlay per (heatmap, slice with heat).

    Parameters
    ----------
    result : PipelineResult
        Its ``heatmaps`` (in ``volume``'s grid) become overlays; a finding
        with the same code lends its probability to the text.
    volume : Volume
        The volume the pipeline ran on; its ``array`` is the grey image.
    sources : sequence of pydicom Dataset
        The source datasets in volume order: ``sources[i]`` is the instance
        of ``volume.sources[i]`` (a multi-frame instance repeats). Their
        headers give the window, photometric interpretation, patient and
        study attributes and the references.
    context : ResultContext
        Pipeline name and version (series description, equipment, UIDs).
    series_number : int
        Series Number of the overlay series of ``result.heatmaps[0]``.
    series_number_step : int
        The overlay series of ``result.heatmaps[i]`` has Series Number
        ``series_number + i * series_number_step``, so every series has its own.

    Returns
    -------
    list of pydicom Dataset
        highdicom ``SCImage`` objects, RGB 8-bit, with a zeroed preamble;
        heatmaps in result order, slices in volume order. Empty when no
        heatmap has heat.

    Raises
    ------
    ValueError
        If a heatmap is not in the volume's grid, ``sources`` does not match
        ``volume.sources``, or two heatmaps are of the same finding (they
        would share a series).
    """
    result.check_grid(volume)
    _check_sources(volume, sources)
    _check_unique_findings(result.heatmaps)
    now = datetime.datetime.now()
    window = _PercentileWindow(volume)
    overlays: list[Dataset] = []
    for position, heatmap in enumerate(result.heatmaps):
        heat = _clean_heat(heatmap.array)
        slices = select_slices(heat)
        if not slices:
            LOGGER.debug("heatmap of %s has no heat; no overlay", heatmap.finding.meaning)
            continue
        finding = _finding_of(result, heatmap.finding)
        series_uid = overlay_series_uid(volume, context, heatmap.finding)
        for index in slices:
            overlays.append(
                _overlay(
                    index,
                    heat[index],
                    heatmap.finding,
                    finding,
                    result,
                    volume,
                    sources[index],
                    context,
                    window,
                    series_uid=series_uid,
                    series_number=series_number + position * series_number_step,
                    now=now,
                )
            )
        LOGGER.debug(
            "heatmap of %s: %d overlay(s) of %d slice(s)",
            heatmap.finding.meaning,
            len(slices),
            heat.shape[0],
        )
    return overlays


def overlay_series_uid(volume: Volume, context: ResultContext, finding: Code) -> str:
    """Series Instance UID of the overlay series of ``finding``'s heatmap.

    Derived from the source series, the pipeline name and version,
    ``"overlay"`` and the finding's code, so the report can name a finding's
    overlays and a re-run replaces them.
    """
    return derived_uid(
        volume.series_instance_uid,
        context.pipeline_name,
        context.pipeline_version,
        "overlay",
        finding.scheme,
        finding.value,
    )


def banner_text(context: ResultContext) -> str:
    """The first banner line: ``AI HEATMAP - NOT FOR DIAGNOSIS`` for a trained
    model, ``AUTOMATED HEATMAP - NOT FOR DIAGNOSIS`` otherwise."""
    return BANNER_TEXT.format(label=context.algorithm.label.upper())


def select_slices(heat: NDArray[np.floating[Any]]) -> list[int]:
    """The slices of a heatmap that get an overlay, in volume order.

    Parameters
    ----------
    heat : ndarray, (slices, rows, columns)
        Heat in 0..1.

    Returns
    -------
    list of int
        Indices of the slices whose maximum exceeds :data:`HEAT_THRESHOLD`;
        when there are more than :data:`MAX_SLICES_PER_HEATMAP`, those with
        the highest maximum (then the highest total, then the lowest index).
    """
    clean = _clean_heat(heat)
    peaks = clean.max(axis=(1, 2))
    hot = [int(i) for i in np.flatnonzero(peaks > HEAT_THRESHOLD)]
    if len(hot) <= MAX_SLICES_PER_HEATMAP:
        return hot
    totals = clean.sum(axis=(1, 2), dtype=np.float64)
    ranked = sorted(hot, key=lambda i: (-float(peaks[i]), -float(totals[i]), i))
    return sorted(ranked[:MAX_SLICES_PER_HEATMAP])


# --- one overlay ----------------------------------------------------------------------------------


def _overlay(
    index: int,
    heat: NDArray[np.float32],
    concept: Code,
    finding: Finding | None,
    result: PipelineResult,
    volume: Volume,
    source: Dataset,
    context: ResultContext,
    window: _PercentileWindow,
    *,
    series_uid: str,
    series_number: int,
    now: datetime.datetime,
) -> Dataset:
    slice_source = volume.sources[index]
    frame_number = slice_source.frame_number
    grey = _grey(volume.array[index], source, frame_number, window)
    factor = max(1, math.ceil(MIN_COLUMNS / grey.shape[1]))
    if factor > 1:
        grey = np.repeat(np.repeat(grey, factor, axis=0), factor, axis=1)
        heat = np.repeat(np.repeat(heat, factor, axis=0), factor, axis=1)
    probability = "" if finding is None else f" p={finding.probability:.2f}"
    lines = [
        banner_text(context),
        f"{_ascii(concept.meaning)}{probability}",
        f"{_ascii(context.pipeline_name)} {_ascii(context.pipeline_version)}",
    ]
    pixels = np.concatenate([_banner(tuple(lines), grey.shape[1]), _blend(grey, heat)], axis=0)

    pipeline = f"{context.pipeline_name} {context.pipeline_version}"
    description = _series_description(context.algorithm.label, concept.meaning, pipeline)
    label = context.algorithm.label
    comments = f"{label} heatmap of {concept.meaning} ({pipeline}), not for diagnosis."
    if finding is not None:
        comments += f" Probability {finding.probability:.3f}"
        if finding.threshold is not None:
            comments += f", threshold {finding.threshold:.3f}"
        comments += "."
    models = ", ".join(f"{m.name} {m.version}" for m in result.models)
    derivation = (
        f"Heatmap of {concept.meaning} ({concept.scheme} {concept.value}) by {pipeline}"
        + (f" (models: {models})" if models else "")
        + f", drawn where heat > {HEAT_THRESHOLD:g} over the source image"
    )[:_ST_MAX]
    own_texts = [description, comments, derivation, context.pipeline_name, pipeline]

    orientation = _patient_orientation(source, volume)
    spacing = _pixel_spacing(volume, factor)
    sop_uid = derived_uid(series_uid, "image", slice_source.sop_instance_uid, frame_number or 0)
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=index + 1,
        manufacturer="dicomnode",
        # highdicom insists on single-letter biped values here; the real
        # (possibly oblique or empty) value is set below.
        patient_orientation=("L", "F"),
        pixel_spacing=spacing,
        series_description=description,
        manufacturer_model_name=context.pipeline_name[:_LO_MAX],
        software_versions=context.pipeline_version[:_LO_MAX],
        content_date=now.date(),
        content_time=now.time(),
        series_date=now.date(),
        series_time=now.time(),
    )
    sc.PatientOrientation = orientation or []  # type 2: empty when unknown
    _copy_patient_and_study(source, sc, own_texts)
    laterality = series_laterality(source)
    if laterality is not None:
        sc.Laterality = laterality
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = comments
    sc.DerivationDescription = derivation
    lossy = str(source.get("LossyImageCompression", "")) == "01"
    sc.LossyImageCompression = "01" if lossy else "00"
    if lossy:
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in source:
                sc[keyword] = source[keyword]
    sc.SourceImageSequence = [_source_reference(slice_source)]
    referenced = Dataset()
    referenced.SeriesInstanceUID = volume.series_instance_uid
    instance = Dataset()  # Common Instance Reference: no frame numbers here
    instance.ReferencedSOPClassUID = slice_source.sop_class_uid
    instance.ReferencedSOPInstanceUID = slice_source.sop_instance_uid
    referenced.ReferencedInstanceSequence = [instance]
    sc.ReferencedSeriesSequence = [referenced]
    return sc


def _blend(grey: NDArray[np.uint8], heat: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Grey image and heat of the same shape to RGB: red-to-yellow where heat
    exceeds the threshold, opacity proportional to heat, grey elsewhere."""
    drawn = heat > HEAT_THRESHOLD
    alpha = np.where(drawn, MAX_ALPHA * heat, 0.0)[..., None]
    ramp = np.clip((heat - HEAT_THRESHOLD) / (1.0 - HEAT_THRESHOLD), 0.0, 1.0)
    colour = np.stack([np.full_like(ramp, 255.0), 255.0 * ramp, np.zeros_like(ramp)], axis=-1)
    base = np.repeat(grey[..., None].astype(np.float32), 3, axis=-1)
    blended = base * (1.0 - alpha) + colour * alpha
    rgb: NDArray[np.uint8] = np.rint(blended).clip(0, 255).astype(np.uint8)
    # Where nothing is drawn the three channels are exactly the grey value.
    rgb[~drawn] = base[~drawn].astype(np.uint8)
    return rgb


@functools.lru_cache(maxsize=16)
def _banner(lines: tuple[str, ...], width: int) -> NDArray[np.uint8]:
    """A black RGB strip, ``width`` wide, with ``lines`` in yellow (read-only:
    the slices of one heatmap share it)."""
    usable = width - 2 * _MARGIN
    size = max(10, width // 32)
    font = ImageFont.load_default(size=size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    while size > _MIN_FONT_SIZE and max(probe.textlength(t, font=font) for t in lines) > usable:
        size -= 1
        font = ImageFont.load_default(size=size)
    fitted = [_fit(line, usable, probe, font) for line in lines]
    top, bottom = probe.textbbox((0, 0), "Ag", font=font)[1::2]
    line_height = math.ceil(bottom - min(top, 0)) + 2
    height = 2 * _MARGIN + line_height * len(fitted)
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(fitted):
        draw.text((_MARGIN, _MARGIN + number * line_height), line, fill=_BANNER_COLOUR, font=font)
    strip = np.array(image, dtype=np.uint8)
    strip.flags.writeable = False
    return strip


def _fit(
    text: str,
    usable: int,
    draw: ImageDraw.ImageDraw,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> str:
    """``text``, shortened with ``...`` until it fits ``usable`` pixels."""
    if draw.textlength(text, font=font) <= usable:
        return text
    while text and draw.textlength(text + "...", font=font) > usable:
        text = text[:-1]
    return text + "..."


# --- grey values ----------------------------------------------------------------------------------


class _PercentileWindow:
    """The fallback window, computed once per volume and only when needed."""

    def __init__(self, volume: Volume) -> None:
        self._volume = volume
        self._window: tuple[float, float] | None = None

    def bounds(self) -> tuple[float, float]:
        if self._window is None:
            array = self._volume.array
            step = max(1, array.shape[0] // 16)
            stride = max(1, max(array.shape[1:]) // 256)
            sample = array[::step, ::stride, ::stride]
            finite = sample[np.isfinite(sample)]
            if finite.size == 0:
                self._window = (0.0, 1.0)
            else:
                low, high = np.percentile(finite, PERCENTILE_WINDOW)
                self._window = (float(low), float(max(high, low + 1.0)))
        return self._window


def _grey(
    values: NDArray[np.float32],
    source: Dataset,
    frame_number: int | None,
    fallback: _PercentileWindow,
) -> NDArray[np.uint8]:
    """A slice's values through the source's VOI window (or the percentile
    window) to 0..255, inverted for MONOCHROME1."""
    x = np.nan_to_num(values.astype(np.float64))
    voi = _voi(source, frame_number)
    if voi is None:
        low, high = fallback.bounds()
        unit = (x - low) / (high - low)
    else:
        center, width, function = voi
        if function == "SIGMOID":
            unit = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
        elif function == "LINEAR_EXACT":
            unit = (x - center) / width + 0.5
        elif width <= 1.0:
            unit = (x > center - 0.5).astype(np.float64)
        else:
            unit = (x - (center - 0.5)) / (width - 1.0) + 0.5
    grey = np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    if str(source.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        grey = np.subtract(255, grey, dtype=np.uint8)
    return grey


def _voi(source: Dataset, frame_number: int | None) -> tuple[float, float, str] | None:
    """(center, width, VOI LUT function) of the first window that applies to
    the frame: top level, then per-frame, then shared functional groups."""
    holders: list[Dataset] = [source]
    if frame_number is not None:
        per_frame = source.get("PerFrameFunctionalGroupsSequence")
        if per_frame is not None and 0 < frame_number <= len(per_frame):
            holders.extend(per_frame[frame_number - 1].get("FrameVOILUTSequence") or [])
    for shared in source.get("SharedFunctionalGroupsSequence") or []:
        holders.extend(shared.get("FrameVOILUTSequence") or [])
    for holder in holders:
        center = _first_number(holder.get("WindowCenter"))
        width = _first_number(holder.get("WindowWidth"))
        if center is None or width is None:
            continue
        function = str(holder.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            function = "LINEAR"
        minimum = 1.0 if function == "LINEAR" else 0.0
        if width < minimum or (width == 0.0 and function != "LINEAR"):
            LOGGER.debug("ignoring window width %s for %s", width, function)
            continue
        return center, width, function
    return None


def _first_number(value: Any) -> float | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _clean_heat(array: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
    return np.clip(np.nan_to_num(np.asarray(array, dtype=np.float32)), 0.0, 1.0)


# --- header values --------------------------------------------------------------------------------


def _copy_patient_and_study(source: Dataset, target: Dataset, own_texts: Sequence[str]) -> None:
    """Patient and study attributes of the source (as in every object of the
    result), its Body Part Examined, and a character set that can encode
    them and our own text."""
    copied = copy_patient_and_study(source, target)
    body_part = str(source.get("BodyPartExamined", "") or "").strip()
    if body_part:
        target.BodyPartExamined = body_part
        copied.append(body_part)
    declared = source.get("SpecificCharacterSet")
    ours_ascii = all(t.isascii() for t in own_texts)
    if ours_ascii and (declared or all(t.isascii() for t in copied)):
        if declared:
            target.SpecificCharacterSet = declared
    else:
        # Values were decoded to str on reading, so UTF-8 carries them all.
        target.SpecificCharacterSet = "ISO_IR 192"


def _source_reference(slice_source: SliceSource) -> Dataset:
    item = _instance_reference(slice_source)
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = _SOURCE_PURPOSE
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def _instance_reference(slice_source: SliceSource) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = slice_source.sop_class_uid
    item.ReferencedSOPInstanceUID = slice_source.sop_instance_uid
    if slice_source.frame_number is not None:
        item.ReferencedFrameNumber = slice_source.frame_number
    return item


def _patient_orientation(source: Dataset, volume: Volume) -> list[str] | None:
    """The source's Patient Orientation, or one derived from the volume's
    directions when the source has plane geometry; ``None`` (empty) else."""
    given = source.get("PatientOrientation")
    if isinstance(given, MultiValue | list | tuple) and len(given) == 2:
        return [str(v) for v in given]
    if not _has_plane_geometry(source):
        return None
    return [_letters(volume.row_direction), _letters(volume.column_direction)]


def _has_plane_geometry(source: Dataset) -> bool:
    if "ImageOrientationPatient" in source:
        return True
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = source.get(keyword) or []
        if any("PlaneOrientationSequence" in group for group in groups[:1]):
            return True
    return False


def _letters(direction: Sequence[float]) -> str:
    """Patient Orientation letters of a direction, the strongest axis first."""
    names = (("L", "R"), ("P", "A"), ("H", "F"))
    order = sorted(range(3), key=lambda axis: -abs(direction[axis]))
    letters = [
        names[axis][0 if direction[axis] > 0 else 1]
        for axis in order
        if abs(direction[axis]) > 1e-4
    ]
    return "".join(letters)


def _pixel_spacing(volume: Volume, factor: int) -> tuple[float, float] | None:
    """Pixel Spacing of the overlay when the source's is in the patient (not
    Imager Pixel Spacing at the detector, which lacks the magnification)."""
    if volume.attributes.get("PixelSpacingSource") != "PixelSpacing":
        return None
    return (volume.spacing[1] / factor, volume.spacing[2] / factor)


def _series_description(label: str, meaning: str, pipeline: str) -> str:
    suffix = f" ({pipeline})"
    prefix = f"{label} heatmap "
    text = f"{prefix}{meaning}{suffix}"
    if len(text) <= _LO_MAX:
        return text
    room = _LO_MAX - len(prefix) - len(suffix) - 3
    if room >= 8:
        return f"{prefix}{meaning[:room]}...{suffix}"
    return text[:_LO_MAX]


def _ascii(text: str) -> str:
    """Text the default font can draw: accents dropped, others as ``?``."""
    folded = unicodedata.normalize("NFKD", text)
    return "".join(c if c.isascii() else "?" for c in folded if not unicodedata.combining(c))


def _finding_of(result: PipelineResult, concept: Code) -> Finding | None:
    for finding in result.findings:
        if (finding.concept.value, finding.concept.scheme) == (concept.value, concept.scheme):
            return finding
    return None


def _check_sources(volume: Volume, sources: Sequence[Dataset]) -> None:
    if len(sources) != len(volume.sources):
        raise ValueError(
            f"sources has {len(sources)} dataset(s) for {len(volume.sources)} slice(s); "
            "give one per slice, in volume order"
        )
    for index, (ds, expected) in enumerate(zip(sources, volume.sources, strict=True)):
        if str(ds.get("SOPInstanceUID", "")) != expected.sop_instance_uid:
            raise ValueError(
                f"sources[{index}] is SOP instance {ds.get('SOPInstanceUID')}, "
                f"volume slice {index} is {expected.sop_instance_uid}"
            )


def _check_unique_findings(heatmaps: Sequence[Heatmap]) -> None:
    seen: set[tuple[str, str]] = set()
    for heatmap in heatmaps:
        key = (heatmap.finding.scheme, heatmap.finding.value)
        if key in seen:
            raise ValueError(
                f"two heatmaps of finding {heatmap.finding.scheme} {heatmap.finding.value} "
                f"({heatmap.finding.meaning}); each finding gets one overlay series"
            )
        seen.add(key)
