"""Checking a volume against a pipeline's declared input contract.

Every pipeline declares an :class:`~dicomnode.protocol.InputSpec` (modality,
slice count, field of view, pixel and slice spacing, body part); the worker
checks each volume against it before the pipeline runs, so a series that
cannot be what the pipeline was made for (a 16x16 CT with an 8 mm field of
view sent to a chest pipeline) ends DEAD at once with the reason, instead of
giving a result that looks like one.
"""

from __future__ import annotations

import re

from dicomnode.protocol import InputRefused, InputSpec, Range, ValidatedRange, Volume

__all__ = ["check_input", "contract_problems", "normalized_body_part", "range_problems"]

_NOT_LETTERS = re.compile(r"[^A-Z]+")


def normalized_body_part(text: str) -> str:
    """Body Part Examined as compared: upper case, letters only."""
    return _NOT_LETTERS.sub("", text.upper())


def _shown(text: str) -> str:
    """A header value as it may appear in a reason (escaped, at most 16 characters)."""
    return ascii(text[:16] + ("..." if len(text) > 16 else ""))


def _within(value: float, bounds: Range | None) -> bool:
    return bounds is None or bounds[0] <= value <= bounds[1]


def _range(bounds: Range) -> str:
    return f"{bounds[0]:g} to {bounds[1]:g} mm"


def check_input(pipeline: str, spec: InputSpec, volume: Volume) -> None:
    """Refuse ``volume`` unless it is inside ``spec``.

    Parameters
    ----------
    pipeline : str
        The pipeline's name, for the reason.
    spec : InputSpec
        The pipeline's declared input contract.
    volume : Volume
        The loaded input series.

    Raises
    ------
    InputRefused
        Naming every property outside the contract, with its value, e.g.
        ``ct-lung refuses this series: field of view 7.8 x 7.8 mm, not 200 to
        800 mm; 5 slice(s), not 16 or more``.
    """
    if volume.modality.upper() not in spec.modalities:
        raise InputRefused(
            f"{pipeline} accepts {', '.join(sorted(spec.modalities))}, "
            f"not {_shown(volume.modality) if volume.modality else 'a series without Modality'}"
        )
    problems = contract_problems(spec, volume)
    if problems:
        raise InputRefused(
            f"{pipeline} refuses this series: {'; '.join(problems)} "
            f"(its input contract; not what {pipeline} was made for)"
        )


def contract_problems(spec: InputSpec, volume: Volume) -> list[str]:
    """Every way ``volume`` (of an accepted modality) is outside ``spec``, one phrase each."""
    problems: list[str] = []
    body_part = normalized_body_part(volume.attributes.get("BodyPartExamined", ""))
    if spec.body_parts and body_part and not any(t in body_part for t in spec.body_parts):
        problems.append(
            f"Body Part Examined {_shown(volume.attributes['BodyPartExamined'])}, "
            f"not one of {', '.join(sorted(spec.body_parts))}"
        )
    slices, rows, columns = volume.array.shape
    slice_spacing, row_spacing, column_spacing = volume.spacing
    pixels_known = volume.attributes.get("PixelSpacingSource") != "none"
    if not pixels_known and (spec.pixel_spacing_mm or spec.field_of_view_mm):
        problems.append("no pixel spacing in the header, so no size in mm")
    if pixels_known and spec.field_of_view_mm is not None:
        height, width = rows * row_spacing, columns * column_spacing
        if not (_within(height, spec.field_of_view_mm) and _within(width, spec.field_of_view_mm)):
            problems.append(
                f"field of view {width:.3g} x {height:.3g} mm ({columns} x {rows} pixels), "
                f"not {_range(spec.field_of_view_mm)}"
            )
    if pixels_known and spec.pixel_spacing_mm is not None:
        if not all(_within(s, spec.pixel_spacing_mm) for s in (row_spacing, column_spacing)):
            problems.append(
                f"pixel spacing {row_spacing:.3g} x {column_spacing:.3g} mm, "
                f"not {_range(spec.pixel_spacing_mm)}"
            )
    if slices > 1 and spec.slice_spacing_mm is not None:
        if volume.attributes.get("SliceSpacingSource") == "none":
            problems.append("no slice positions or spacing in the header")
        elif not _within(slice_spacing, spec.slice_spacing_mm):
            problems.append(
                f"slices {slice_spacing:.3g} mm apart, not {_range(spec.slice_spacing_mm)}"
            )
    if slices < spec.min_slices or (spec.max_slices is not None and slices > spec.max_slices):
        wanted = (
            f"{spec.min_slices} or more"
            if spec.max_slices is None
            else f"{spec.min_slices}"
            if spec.min_slices == spec.max_slices
            else f"{spec.min_slices} to {spec.max_slices}"
        )
        problems.append(f"{slices} slice(s), not {wanted}")
    return problems


def _number(volume: Volume, keyword: str) -> float | None:
    text = volume.attributes.get(keyword, "").split("\\")[0].strip()
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _outside(name: str, value: float | None, bounds: Range | None, unit: str) -> str | None:
    if bounds is None:
        return None
    wanted = f"{bounds[0]:g} to {bounds[1]:g}{unit}"
    if value is None:
        return f"no {name} in the header (validated on {wanted})"
    if _within(value, bounds):
        return None
    return f"{name} {value:.3g}{unit}, validated on {wanted}"


def range_problems(validated: ValidatedRange, volume: Volume) -> list[str]:
    """Every way ``volume`` is outside the range its pipeline was validated on.

    Parameters
    ----------
    validated : ValidatedRange
        The pipeline's declared validated range (``InputSpec.validated``).
    volume : Volume
        The loaded input series (already inside the contract).

    Returns
    -------
    list of str
        One phrase each, e.g. ``slice thickness 5 mm, validated on 0.5 to 3
        mm``; empty when the volume is inside the range or none is declared.
    """
    if validated.empty:
        return []
    slices = volume.array.shape[0]
    slice_spacing, row_spacing, column_spacing = volume.spacing
    pixels_known = volume.attributes.get("PixelSpacingSource") != "none"
    found = [
        _outside(
            "slice thickness",
            _number(volume, "SliceThickness"),
            validated.slice_thickness_mm,
            " mm",
        ),
        _outside("kVp", _number(volume, "KVP"), validated.kvp, ""),
    ]
    if validated.pixel_spacing_mm is not None:
        outside = [
            s for s in (row_spacing, column_spacing) if not _within(s, validated.pixel_spacing_mm)
        ]
        spacing = None if not pixels_known else outside[0] if outside else row_spacing
        found.append(_outside("pixel spacing", spacing, validated.pixel_spacing_mm, " mm"))
    if validated.slice_spacing_mm is not None and slices > 1:
        known = volume.attributes.get("SliceSpacingSource") != "none"
        found.append(
            _outside(
                "slice spacing",
                slice_spacing if known else None,
                validated.slice_spacing_mm,
                " mm",
            )
        )
    if validated.slices is not None and not validated.slices[0] <= slices <= validated.slices[1]:
        found.append(
            f"{slices} slice(s), validated on {validated.slices[0]} to {validated.slices[1]}"
        )
    return [problem for problem in found if problem is not None]
