"""Loading one DICOM series into a :class:`~dicomnode.protocol.Volume`.

The runner hands pipelines a volume, never files. This module turns the files
of one series into that volume, or refuses with a
:class:`~dicomnode.errors.VolumeError` whose message says what is wrong with
the series. It reads headers and pixel data with pydicom (compressed transfer
syntaxes through pydicom's pixel data plugins) and knows nothing of
pipelines, jobs or the spool.

What becomes a slice
--------------------
* Single-frame images (CT, MR, PET...) each become one slice. Slices are
  ordered by their position along the slice normal, ``cross(row, column)``
  of Image Orientation (Patient), never by Instance Number.
* The frames of a multi-frame object become slices. Enhanced objects give
  each frame's geometry in their Per-Frame (or Shared) Functional Groups and
  are ordered by position like single-frame slices; RT Dose grids give it in
  Grid Frame Offset Vector. A multi-frame object without per-frame geometry
  (a cine loop, an angiography run) keeps its frame order.
* A single projection image (CR, DX, MG...) becomes a volume of one slice.

Tolerances
----------
Headers are written by many scanners with limited decimal places, so
geometry is compared within tolerances, each a module constant:

* Orientation: all Image Orientation (Patient) values must agree within
  :data:`ORIENTATION_TOLERANCE` (1e-4) in every direction cosine.
* Slice spacing: the gaps between consecutive positions must all be within
  ``max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_RELATIVE * expected)`` of
  the expected gap (0.01 mm or 1 %, whichever is larger), where the expected
  gap is the median gap. Two slices closer than :data:`SPACING_TOLERANCE_MM`
  share a position.
* In-plane drift: every slice must lie on the line through the first slice
  along the normal, within :data:`IN_PLANE_TOLERANCE_PIXELS` (0.1) of a
  pixel (at least 0.01 mm); otherwise the stack is sheared (gantry tilt)
  and a volume with orthogonal axes would misplace it.
* Pixel spacing: equal across slices within :data:`PIXEL_SPACING_TOLERANCE`
  (0.1 %).

Attributes
----------
Besides a few header values (:data:`ATTRIBUTE_KEYWORDS`), the volume's
``attributes`` say where its geometry came from:

``SliceSpacingSource``
    ``positions`` (from the slices' positions), ``SpacingBetweenSlices`` or
    ``SliceThickness`` (one slice only), or ``none`` (spacing 1.0 stands in).
``PixelSpacingSource``
    ``PixelSpacing``, ``ImagerPixelSpacing`` (at the detector, not corrected
    for magnification), or ``none`` (1.0 stands in).
``SliceOrder``
    ``position`` (sorted along the normal), ``frames`` (a multi-frame
    object's stored order, without geometry) or ``single`` (one slice).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array

from dicomnode.errors import VolumeError
from dicomnode.protocol import SliceSource, Vector3, Volume

__all__ = [
    "ATTRIBUTE_KEYWORDS",
    "IN_PLANE_TOLERANCE_PIXELS",
    "ORIENTATION_TOLERANCE",
    "PIXEL_SPACING_TOLERANCE",
    "SPACING_TOLERANCE_MM",
    "SPACING_TOLERANCE_RELATIVE",
    "load_series",
    "load_series_datasets",
]

LOGGER = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-4
"""Largest difference between two direction cosines still the same orientation."""

SPACING_TOLERANCE_MM = 0.01
"""Absolute slack (mm) of a gap between slices; closer slices share a position."""

SPACING_TOLERANCE_RELATIVE = 0.01
"""Relative slack of a gap between slices, as a fraction of the expected gap."""

IN_PLANE_TOLERANCE_PIXELS = 0.1
"""Largest in-plane drift of a slice from the first one, in pixels."""

PIXEL_SPACING_TOLERANCE = 1e-3
"""Largest relative difference of two slices' pixel spacings."""

ATTRIBUTE_KEYWORDS = (
    "Modality",
    "PhotometricInterpretation",
    "BodyPartExamined",
    "ViewPosition",
    "PatientOrientation",
    "ImageLaterality",
    "SeriesDescription",
    "Manufacturer",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "SliceThickness",
    "KVP",
)
"""Header values copied into ``Volume.attributes`` when present (never patient data)."""

_ORTHONORMAL_TOLERANCE = 1e-3
_IDENTITY: tuple[Vector3, Vector3, Vector3] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


@dataclass(frozen=True)
class _Frame:
    """One future slice: where its pixels are and what its header says."""

    dataset: int  # index into the datasets
    frame: int | None  # 0-based frame of a multi-frame object, None for single-frame
    position: NDArray[np.float64] | None  # Image Position (Patient)
    orientation: NDArray[np.float64] | None  # Image Orientation (Patient), 6 values
    pixel_spacing: tuple[float, float] | None
    pixel_spacing_source: str
    slice_spacing: float | None  # from the header, used for a single slice
    slice_spacing_source: str
    slope: float
    intercept: float
    modality_lut: bool  # apply the Modality LUT Sequence instead of slope/intercept
    label: str  # names the slice in messages

    @property
    def has_geometry(self) -> bool:
        return self.position is not None and self.orientation is not None


@dataclass(frozen=True)
class _Geometry:
    order: list[int]  # frame indices in slice order
    slice_spacing: float
    origin: Vector3
    row: Vector3
    column: Vector3
    normal: Vector3
    attributes: dict[str, str]


def load_series(paths: Sequence[str | PathLike[str]]) -> Volume:
    """Read the files of one series and return them as a volume.

    Parameters
    ----------
    paths : sequence of path-like
        The series' files, in any order.

    Returns
    -------
    Volume
        Slices ordered by position along the slice normal (see
        :func:`load_series_datasets`).

    Raises
    ------
    VolumeError
        If a file cannot be read as DICOM, or the files cannot become one
        correct volume; the message says why.
    TypeError
        If ``paths`` is a single path rather than a sequence of paths.
    """
    return load_series_datasets(read_series(paths))


def read_series(paths: Sequence[str | PathLike[str]]) -> list[Dataset]:
    """Read the files of one series, pixel data included, in the order given.

    Raises
    ------
    VolumeError
        A file cannot be read as DICOM.
    TypeError
        If ``paths`` is a single path rather than a sequence of paths.
    """
    if isinstance(paths, str | PathLike):
        raise TypeError("load_series takes a sequence of paths, not a single path")
    datasets: list[Dataset] = []
    for path in paths:
        try:
            datasets.append(dcmread(path))
        except (InvalidDicomError, OSError, EOFError) as exc:
            raise VolumeError(f"cannot read {path} as DICOM: {exc}") from exc
    return datasets


#: The elements that hold an image's pixels.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def drop_pixels(datasets: Sequence[Dataset]) -> None:
    """Remove the pixel data from each dataset (once the volume holds the
    pixels), keeping the headers."""
    for ds in datasets:
        for keyword in PIXEL_KEYWORDS:
            if keyword in ds:
                del ds[keyword]


def load_series_datasets(datasets: Sequence[Dataset]) -> Volume:
    """Turn the datasets of one series into a volume.

    Parameters
    ----------
    datasets : sequence of pydicom Dataset
        Every instance of the series, in any order, with pixel data and file
        meta information (for the transfer syntax). They are not modified.

    Returns
    -------
    Volume
        ``array`` is float32 ``(slices, rows, columns)`` with each slice's
        rescale slope and intercept (or Modality LUT) applied. Slices are
        ordered by position along ``slice_direction`` (the slice normal), so
        ``origin`` is the first slice's Image Position (Patient). Images
        without geometry get the identity directions and origin (0, 0, 0).

    Raises
    ------
    VolumeError
        If the datasets belong to several series, hold colour or no pixel
        data, differ in size, orientation, pixel spacing or frame of
        reference, share a position, leave a gap or lie on a sheared stack,
        lack geometry where several images must be ordered, or their pixel
        data cannot be decoded.
    """
    if not datasets:
        raise VolumeError("no images given: a volume needs at least one")
    _check_same_series(datasets)
    rows, columns = _check_images(datasets)
    frames: list[_Frame] = []
    for index, ds in enumerate(datasets):
        frames.extend(_frames_of(ds, index))
    geometry = _arrange(frames, datasets)
    ordered = [frames[i] for i in geometry.order]
    row_spacing, column_spacing, pixel_source = _pixel_spacing(ordered)
    array = _pixels(ordered, datasets, rows, columns)
    first = datasets[ordered[0].dataset]
    attributes = _header_attributes(first)
    attributes.update(geometry.attributes)
    attributes["PixelSpacingSource"] = pixel_source
    sources = tuple(
        SliceSource(
            sop_instance_uid=str(datasets[f.dataset].SOPInstanceUID),
            sop_class_uid=str(datasets[f.dataset].SOPClassUID),
            frame_number=None if f.frame is None else f.frame + 1,
        )
        for f in ordered
    )
    LOGGER.debug(
        "loaded %d slice(s) of %dx%d from series %s (%s)",
        len(ordered),
        rows,
        columns,
        first.SeriesInstanceUID,
        ", ".join(f"{k}={v}" for k, v in geometry.attributes.items()),
    )
    return Volume(
        array=array,
        spacing=(geometry.slice_spacing, row_spacing, column_spacing),
        origin=geometry.origin,
        row_direction=geometry.row,
        column_direction=geometry.column,
        slice_direction=geometry.normal,
        modality=str(first.get("Modality", "")),
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        sources=sources,
        attributes=attributes,
    )


# --- checks on whole instances ----------------------------------------------------------------


def _check_same_series(datasets: Sequence[Dataset]) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if "" in series:
        raise VolumeError("an image has no SeriesInstanceUID")
    if len(series) > 1:
        shown = ", ".join(sorted(series)[:3]) + (", ..." if len(series) > 3 else "")
        raise VolumeError(
            f"the images belong to {len(series)} series ({shown}); a volume is one series"
        )
    seen: set[str] = set()
    for ds in datasets:
        uid = str(ds.get("SOPInstanceUID", ""))
        if not uid:
            raise VolumeError("an image has no SOPInstanceUID")
        if uid in seen:
            raise VolumeError(f"SOP instance {uid} was given twice")
        seen.add(uid)


def _check_images(datasets: Sequence[Dataset]) -> tuple[int, int]:
    """Check every instance holds monochrome pixel data of one size; return it."""
    sizes: dict[tuple[int, int], int] = {}
    for ds in datasets:
        uid = ds.SOPInstanceUID
        if not any(k in ds for k in PIXEL_KEYWORDS):
            raise VolumeError(f"SOP instance {uid} has no pixel data")
        samples = _int_value(ds.get("SamplesPerPixel"), default=1)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip()
        if samples != 1 or photometric == "PALETTE COLOR":
            raise VolumeError(
                f"SOP instance {uid} is a colour image (SamplesPerPixel {samples}, "
                f"{photometric}); colour images are not supported as volumes"
            )
        if "Rows" not in ds or "Columns" not in ds:
            raise VolumeError(f"SOP instance {uid} has no Rows or Columns")
        size = (int(ds.Rows), int(ds.Columns))
        sizes[size] = sizes.get(size, 0) + 1
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            raise VolumeError(
                f"SOP instance {uid} has no Transfer Syntax UID in its file meta information"
            )
    if len(sizes) > 1:
        counts = ", ".join(f"{n} of {r}x{c}" for (r, c), n in sorted(sizes.items()))
        raise VolumeError(f"the images differ in size (rows x columns): {counts}")
    return next(iter(sizes))


# --- one instance's frames --------------------------------------------------------------------


def _frames_of(ds: Dataset, index: int) -> list[_Frame]:
    """The slices one instance contributes, with their header geometry."""
    uid = str(ds.SOPInstanceUID)
    count = _int_value(ds.get("NumberOfFrames"), default=1)
    if count < 1:
        raise VolumeError(f"SOP instance {uid} has NumberOfFrames {count}")
    multi_frame = "NumberOfFrames" in ds
    if not multi_frame:
        label = f"SOP instance {uid}"
        spacing, spacing_source = _in_plane_spacing((ds,), label)
        thickness, thickness_source = _slice_spacing((ds,), label)
        slope, intercept, lut = _rescale((ds,), ds, label)
        return [
            _Frame(
                dataset=index,
                frame=None,
                position=_vector(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", label),
                orientation=_vector(
                    ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", label
                ),
                pixel_spacing=spacing,
                pixel_spacing_source=spacing_source,
                slice_spacing=thickness,
                slice_spacing_source=thickness_source,
                slope=slope,
                intercept=intercept,
                modality_lut=lut,
                label=label,
            )
        ]
    shared = _first_item(ds.get("SharedFunctionalGroupsSequence"))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != count:
        raise VolumeError(
            f"SOP instance {uid} has {count} frames but {len(per_frame)} "
            "Per-Frame Functional Groups items"
        )
    instance = f"SOP instance {uid}"
    offsets = _grid_frame_offsets(ds, count, instance)
    top_orientation = _vector(
        ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", instance
    )
    frames: list[_Frame] = []
    for number in range(count):
        label = f"frame {number + 1} of SOP instance {uid}"
        groups = [g for g in (per_frame[number] if per_frame else None, shared) if g is not None]
        position = _vector(
            _group_value(groups, "PlanePositionSequence", "ImagePositionPatient"),
            3,
            "ImagePositionPatient",
            label,
        )
        orientation = _vector(
            _group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
            6,
            "ImageOrientationPatient",
            label,
        )
        if orientation is None and not per_frame and shared is None:
            # A legacy multi-frame object: one orientation for all frames.
            orientation = top_orientation
        if position is None and offsets is not None:
            # RT Dose: one position for the grid, frames along its normal.
            top_position = _vector(
                ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", instance
            )
            if top_position is not None and orientation is not None:
                normal = np.cross(orientation[:3], orientation[3:])
                position = top_position + offsets[number] * normal / np.linalg.norm(normal)
        measures = [_first_item(g.get("PixelMeasuresSequence")) for g in groups]
        headers = (*(m for m in measures if m is not None), ds)
        spacing, spacing_source = _in_plane_spacing(headers, label)
        thickness, thickness_source = _slice_spacing(headers, label)
        transforms = [_first_item(g.get("PixelValueTransformationSequence")) for g in groups]
        slope, intercept, lut = _rescale((*(t for t in transforms if t is not None), ds), ds, label)
        frames.append(
            _Frame(
                dataset=index,
                frame=number,
                position=position,
                orientation=orientation,
                pixel_spacing=spacing,
                pixel_spacing_source=spacing_source,
                slice_spacing=thickness,
                slice_spacing_source=thickness_source,
                slope=slope,
                intercept=intercept,
                modality_lut=lut,
                label=label,
            )
        )
    return frames


def _grid_frame_offsets(ds: Dataset, count: int, label: str) -> NDArray[np.float64] | None:
    """RT Dose frame offsets along the normal relative to the first frame, if any."""
    vector = ds.get("GridFrameOffsetVector")
    if vector is None or "PerFrameFunctionalGroupsSequence" in ds:
        return None
    offsets = _floats(vector, "GridFrameOffsetVector", label)
    if len(offsets) != count:
        raise VolumeError(
            f"{label} has {count} frames but {len(offsets)} GridFrameOffsetVector values"
        )
    # Relative offsets start at 0; absolute ones start at the first frame's z.
    relative: NDArray[np.float64] = offsets - offsets[0]
    return relative


def _group_value(groups: Iterable[Dataset], sequence: str, keyword: str) -> Any:
    """A functional group attribute: the per-frame item first, then the shared one."""
    for group in groups:
        item = _first_item(group.get(sequence))
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def _first_item(sequence: Any) -> Dataset | None:
    if not sequence:
        return None
    item = sequence[0]
    return item if isinstance(item, Dataset) else None


def _in_plane_spacing(
    headers: Sequence[Dataset], label: str
) -> tuple[tuple[float, float] | None, str]:
    """(between rows, between columns) and the keyword it came from."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        for header in headers:
            value = header.get(keyword)
            if not _present(value):
                continue
            numbers = _floats(value, keyword, label)
            if numbers.shape != (2,) or not np.all(numbers > 0.0):
                raise VolumeError(f"{label} has an invalid {keyword}: {_text(value)}")
            return (float(numbers[0]), float(numbers[1])), keyword
    return None, "none"


def _slice_spacing(headers: Sequence[Dataset], label: str) -> tuple[float | None, str]:
    """Header slice spacing (for a single slice) and the keyword it came from."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        for header in headers:
            value = header.get(keyword)
            if not _present(value):
                continue
            number = abs(float(_floats(value, keyword, label)[0]))
            if number > 0.0:
                return number, keyword
    return None, "none"


def _rescale(headers: Sequence[Dataset], ds: Dataset, label: str) -> tuple[float, float, bool]:
    """(slope, intercept, use the Modality LUT Sequence) for one slice."""
    for header in headers:
        if _present(header.get("RescaleSlope")) or _present(header.get("RescaleIntercept")):
            slope = _optional_float(header.get("RescaleSlope"), 1.0, "RescaleSlope", label)
            intercept = _optional_float(
                header.get("RescaleIntercept"), 0.0, "RescaleIntercept", label
            )
            return slope, intercept, False
    if _present(ds.get("ModalityLUTSequence")):
        return 1.0, 0.0, True
    if _present(ds.get("DoseGridScaling")):
        return _optional_float(ds.DoseGridScaling, 1.0, "DoseGridScaling", label), 0.0, False
    return 1.0, 0.0, False


# --- geometry -----------------------------------------------------------------------------------


def _arrange(frames: Sequence[_Frame], datasets: Sequence[Dataset]) -> _Geometry:
    """Order the slices and find the volume's geometry."""
    with_geometry = [f for f in frames if f.has_geometry]
    if len(frames) == 1:
        return _single(frames[0])
    if not with_geometry:
        if len({f.dataset for f in frames}) == 1:
            return _frame_order(frames, datasets)
        raise VolumeError(
            f"{len(frames)} images without ImagePositionPatient/ImageOrientationPatient "
            "cannot be ordered into a volume (load projection images one at a time)"
        )
    if len(with_geometry) != len(frames):
        missing = next(f for f in frames if not f.has_geometry)
        raise VolumeError(
            f"{len(frames) - len(with_geometry)} of {len(frames)} images lack "
            f"ImagePositionPatient or ImageOrientationPatient (e.g. {missing.label})"
        )
    _check_frame_of_reference(frames, datasets)
    row, column, normal = _directions(frames)
    positions = np.array([f.position for f in frames], dtype=np.float64)
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    sorted_along = along[order]
    gaps = np.diff(sorted_along)
    _check_duplicates(gaps, sorted_along, [frames[i] for i in order])
    _check_uniform(gaps, sorted_along)
    _check_not_sheared(positions[order], normal, frames[order[0]])
    slice_spacing = float(sorted_along[-1] - sorted_along[0]) / (len(frames) - 1)
    return _Geometry(
        order=order,
        slice_spacing=slice_spacing,
        origin=_vector3(positions[order[0]]),
        row=_vector3(row),
        column=_vector3(column),
        normal=_vector3(normal),
        attributes={"SliceSpacingSource": "positions", "SliceOrder": "position"},
    )


def _single(frame: _Frame) -> _Geometry:
    """One slice: its own geometry where it has one, the identity otherwise."""
    if frame.orientation is not None:
        row, column, normal = _directions([frame])
        directions = (_vector3(row), _vector3(column), _vector3(normal))
    else:
        directions = _IDENTITY
    origin = _vector3(frame.position) if frame.position is not None else (0.0, 0.0, 0.0)
    spacing = frame.slice_spacing if frame.slice_spacing is not None else 1.0
    return _Geometry(
        order=[0],
        slice_spacing=spacing,
        origin=origin,
        row=directions[0],
        column=directions[1],
        normal=directions[2],
        attributes={"SliceSpacingSource": frame.slice_spacing_source, "SliceOrder": "single"},
    )


def _frame_order(frames: Sequence[_Frame], datasets: Sequence[Dataset]) -> _Geometry:
    """A multi-frame object without per-frame geometry keeps its stored order."""
    LOGGER.info(
        "SOP instance %s has %d frames without per-frame positions; keeping frame order",
        datasets[frames[0].dataset].SOPInstanceUID,
        len(frames),
    )
    orientations = {tuple(f.orientation) for f in frames if f.orientation is not None}
    if len(orientations) == 1 and len(frames) == sum(f.orientation is not None for f in frames):
        row, column, normal = _directions(frames)
        directions = (_vector3(row), _vector3(column), _vector3(normal))
    else:
        directions = _IDENTITY
    position = frames[0].position
    return _Geometry(
        order=list(range(len(frames))),
        slice_spacing=1.0,
        origin=_vector3(position) if position is not None else (0.0, 0.0, 0.0),
        row=directions[0],
        column=directions[1],
        normal=directions[2],
        attributes={"SliceSpacingSource": "none", "SliceOrder": "frames"},
    )


def _directions(
    frames: Sequence[_Frame],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Row, column and normal unit vectors shared by all frames."""
    orientations = np.array([f.orientation for f in frames], dtype=np.float64)
    differs = np.abs(orientations - orientations[0]).max(axis=1) > ORIENTATION_TOLERANCE
    if differs.any():
        groups: list[tuple[NDArray[np.float64], int]] = []
        for orientation in orientations:
            for i, (seen, n) in enumerate(groups):
                if np.abs(orientation - seen).max() <= ORIENTATION_TOLERANCE:
                    groups[i] = (seen, n + 1)
                    break
            else:
                groups.append((orientation, 1))
        shown = "; ".join(f"{n} with {_cosines(o)}" for o, n in groups[:4])
        raise VolumeError(
            f"mixed orientations: {len(groups)} different ImageOrientationPatient values "
            f"({shown}); a volume has one (a localizer in the series?)"
        )
    row, column = orientations[0, :3], orientations[0, 3:]
    row_norm, column_norm = float(np.linalg.norm(row)), float(np.linalg.norm(column))
    if (
        abs(row_norm - 1.0) > _ORTHONORMAL_TOLERANCE
        or abs(column_norm - 1.0) > _ORTHONORMAL_TOLERANCE
        or abs(float(row @ column)) > _ORTHONORMAL_TOLERANCE
    ):
        raise VolumeError(
            f"ImageOrientationPatient {_cosines(orientations[0])} of {frames[0].label} "
            "is not two orthogonal unit vectors"
        )
    row, column = row / row_norm, column / column_norm
    normal = np.cross(row, column)
    return row, column, normal / np.linalg.norm(normal)


def _check_frame_of_reference(frames: Sequence[_Frame], datasets: Sequence[Dataset]) -> None:
    uids = {str(datasets[f.dataset].get("FrameOfReferenceUID", "")) for f in frames}
    if len(uids) > 1:
        raise VolumeError(
            f"the images have {len(uids)} different FrameOfReferenceUID values; "
            "their positions are not in one coordinate system"
        )


def _check_duplicates(
    gaps: NDArray[np.float64], along: NDArray[np.float64], ordered: Sequence[_Frame]
) -> None:
    same = np.flatnonzero(gaps <= SPACING_TOLERANCE_MM)
    if same.size == 0:
        return
    i = int(same[0])
    more = f"; {same.size - 1} more duplicate position(s)" if same.size > 1 else ""
    raise VolumeError(
        f"duplicate slice position {_mm(along[i])} mm along the slice normal: "
        f"{ordered[i].label} and {ordered[i + 1].label}{more} "
        "(several acquisitions, echoes or phases in one series?)"
    )


def _check_uniform(gaps: NDArray[np.float64], along: NDArray[np.float64]) -> None:
    """Refuse gaps that differ from the median gap (missing or extra slices)."""
    if gaps.size < 2:
        return
    expected = float(np.sort(gaps)[(gaps.size - 1) // 2])
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_RELATIVE * expected)
    wrong = np.flatnonzero(np.abs(gaps - expected) > tolerance)
    if wrong.size == 0:
        return
    i = int(wrong[0])
    gap = float(gaps[i])
    ratio = gap / expected
    if ratio > 1.5 and abs(ratio - round(ratio)) * expected <= tolerance:
        missing = round(ratio) - 1
        hint = " (missing slice?)" if missing == 1 else f" ({missing} missing slices?)"
    elif gap < expected:
        hint = " (an extra or overlapping slice?)"
    else:
        hint = ""
    more = f"; {wrong.size - 1} other gap(s) differ too" if wrong.size > 1 else ""
    raise VolumeError(
        f"slice spacing is not uniform: expected {_mm(expected)} mm, found a {_mm(gap)} mm gap "
        f"between positions {_mm(along[i])} and {_mm(along[i + 1])} mm{hint}{more}"
    )


def _check_not_sheared(
    positions: NDArray[np.float64], normal: NDArray[np.float64], first: _Frame
) -> None:
    """Refuse stacks whose slices drift within their plane (gantry tilt)."""
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(in_plane, axis=1)
    pixel = min(first.pixel_spacing) if first.pixel_spacing is not None else 1.0
    tolerance = max(SPACING_TOLERANCE_MM, IN_PLANE_TOLERANCE_PIXELS * pixel)
    worst = int(np.argmax(drift))
    if drift[worst] > tolerance:
        raise VolumeError(
            f"the slices do not line up along the slice normal: slice {worst + 1} is shifted "
            f"{_mm(drift[worst])} mm within the image plane from slice 1 (gantry tilt or a "
            "sheared stack); it cannot be described as a volume with orthogonal axes"
        )


def _pixel_spacing(ordered: Sequence[_Frame]) -> tuple[float, float, str]:
    """(between rows, between columns, source keyword), equal for all slices."""
    first = ordered[0]
    for frame in ordered[1:]:
        if frame.pixel_spacing_source != first.pixel_spacing_source or (
            frame.pixel_spacing is not None
            and first.pixel_spacing is not None
            and not np.allclose(
                frame.pixel_spacing, first.pixel_spacing, rtol=PIXEL_SPACING_TOLERANCE, atol=0.0
            )
        ):
            raise VolumeError(
                f"pixel spacing differs between slices: {_spacing_text(first)} in "
                f"{first.label}, {_spacing_text(frame)} in {frame.label}"
            )
    if first.pixel_spacing is None:
        LOGGER.info("%s has no pixel spacing; 1.0 stands in", first.label)
        return 1.0, 1.0, "none"
    return first.pixel_spacing[0], first.pixel_spacing[1], first.pixel_spacing_source


# --- pixels -------------------------------------------------------------------------------------


def _pixels(
    ordered: Sequence[_Frame], datasets: Sequence[Dataset], rows: int, columns: int
) -> NDArray[np.float32]:
    """Decode every instance once and write its rescaled frames into their slices."""
    array = np.empty((len(ordered), rows, columns), dtype=np.float32)
    slots: dict[int, list[int]] = {}
    for slot, frame in enumerate(ordered):
        slots.setdefault(frame.dataset, []).append(slot)
    for index, targets in slots.items():
        ds = datasets[index]
        decoded = _decode(ds, rows, columns)
        for slot in targets:
            frame = ordered[slot]
            source = decoded[frame.frame if frame.frame is not None else 0]
            out = array[slot]
            if frame.modality_lut:
                out[...] = apply_modality_lut(source, ds)
            elif frame.slope == 1.0 and float(frame.intercept).is_integer():
                # Exact in float32 for stored values and intercepts below 2**24.
                np.add(source, np.float32(frame.intercept), out=out, dtype=np.float32)
            else:
                np.add(source * frame.slope, frame.intercept, out=out, casting="same_kind")
    return array


def _decode(ds: Dataset, rows: int, columns: int) -> NDArray[Any]:
    """The instance's stored values as (frames, rows, columns)."""
    uid = ds.SOPInstanceUID
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        # The function rather than ds.pixel_array: same plugins, but the decoded
        # array is not cached on the dataset, so memory is freed slice by slice.
        decoded: NDArray[Any] = pixel_array(ds)
    except (ValueError, RuntimeError) as exc:
        raise VolumeError(
            f"cannot decode the pixel data of SOP instance {uid} "
            f"({getattr(syntax, 'name', syntax)}): {exc}"
        ) from exc
    frames = _int_value(ds.get("NumberOfFrames"), default=1)
    if decoded.size != frames * rows * columns:
        raise VolumeError(
            f"SOP instance {uid} decoded to shape {decoded.shape}, "
            f"expected {frames} frame(s) of {rows}x{columns}"
        )
    return decoded.reshape(frames, rows, columns)


# --- small helpers ------------------------------------------------------------------------------


def _header_attributes(ds: Dataset) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for keyword in ATTRIBUTE_KEYWORDS:
        value = ds.get(keyword)
        if value is None:
            continue
        text = _text(value)
        if text:
            attributes[keyword] = text
    return attributes


def _text(value: Any) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _floats(value: Any, keyword: str, label: str) -> NDArray[np.float64]:
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        numbers = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{label} has a {keyword} that is not numeric: {_text(value)}") from exc
    if not np.all(np.isfinite(numbers)):
        raise VolumeError(f"{label} has a {keyword} that is not finite: {_text(value)}")
    return numbers


def _present(value: Any) -> bool:
    """Whether a header value is there and not empty (Type 2 elements may be empty)."""
    if value is None:
        return False
    if isinstance(value, str | bytes | MultiValue | list | tuple):
        return len(value) > 0
    return True


def _vector(value: Any, length: int, keyword: str, label: str) -> NDArray[np.float64] | None:
    if not _present(value):
        return None
    numbers = _floats(value, keyword, label)
    if numbers.shape != (length,):
        raise VolumeError(f"{label} has a {keyword} of {numbers.size} values, not {length}")
    return numbers


def _optional_float(value: Any, default: float, keyword: str, label: str) -> float:
    if not _present(value):
        return default
    return float(_floats(value, keyword, label)[0])


def _int_value(value: Any, default: int) -> int:
    if not _present(value):
        return default
    return int(value)


def _vector3(values: Any) -> Vector3:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def _mm(value: float) -> str:
    """Millimetres for a message: up to 3 decimals, at least one (``5.0``, ``0.625``)."""
    text = f"{float(value):.3f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return "0.0" if text == "-0.0" else text


def _cosines(orientation: NDArray[np.float64]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in orientation) + ")"


def _spacing_text(frame: _Frame) -> str:
    if frame.pixel_spacing is None:
        return "none"
    row, column = frame.pixel_spacing
    return f"{row:g} x {column:g} mm ({frame.pixel_spacing_source})"
