"""Picking a rule's input series among the candidate series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicomnode.config.rules import SeriesSelection
from dicomnode.routing.matchers import ABSENT, as_number, as_text, show_value, values_of
from dicomnode.routing.model import SeriesInfo


@dataclass(frozen=True)
class Pick:
    """The outcome of picking a series.

    Attributes
    ----------
    series : SeriesInfo or None
        The picked series; ``None`` when no candidate qualified.
    reasons : tuple of str
        What was checked, ending with the ``picked series ...`` line or the
        reason nothing was picked.
    """

    series: SeriesInfo | None
    reasons: tuple[str, ...]


def _most_instances_key(series: SeriesInfo) -> tuple[int, str]:
    return (-series.instance_count, series.series_instance_uid)


def slice_thickness(series: SeriesInfo) -> float | None:
    """The series' SliceThickness as a number, ``None`` when absent or not a number."""
    values = values_of(series.attributes.get("SliceThickness", ABSENT))
    return as_number(values[0]) if values else None


def _instances(series: SeriesInfo) -> str:
    count = series.instance_count
    return f"{count} instance" if count == 1 else f"{count} instances"


def pick_series(selection: SeriesSelection, candidates: Sequence[SeriesInfo]) -> Pick:
    """Pick one series among ``candidates`` the way ``selection`` says.

    Parameters
    ----------
    selection : SeriesSelection
        ``most_instances``: the most instances, ties to the first
        SeriesInstanceUID in sort order; ``thinnest_slices``: the smallest
        numeric SliceThickness (series without one last), ties to the most
        instances; ``description_regex``: among the series whose
        SeriesDescription matches the regex, the most instances.
    candidates : sequence of SeriesInfo
        The series that satisfy the rule's series matchers.

    Returns
    -------
    Pick
        The series (or none) and the reason lines.
    """
    if not candidates:
        return Pick(None, ("no series satisfies the series matchers: no",))
    if selection.pick == "thinnest_slices":
        chosen = min(candidates, key=_thinnest_key)
        thickness = slice_thickness(chosen)
        detail = (
            "no SliceThickness"
            if thickness is None
            else f"SliceThickness {show_value(chosen.attributes['SliceThickness'])}"
        )
        return Pick(
            chosen,
            (
                f"picked series {chosen.series_instance_uid} "
                f"(thinnest_slices, {detail}, {_instances(chosen)})",
            ),
        )
    if selection.pick == "description_regex":
        return _pick_by_description(selection, candidates)
    chosen = min(candidates, key=_most_instances_key)
    return Pick(
        chosen,
        (f"picked series {chosen.series_instance_uid} (most_instances, {_instances(chosen)})",),
    )


def _thinnest_key(series: SeriesInfo) -> tuple[int, float, int, str]:
    thickness = slice_thickness(series)
    missing = 1 if thickness is None else 0
    return (missing, thickness or 0.0, -series.instance_count, series.series_instance_uid)


def _pick_by_description(selection: SeriesSelection, candidates: Sequence[SeriesInfo]) -> Pick:
    pattern = selection.regex
    if pattern is None:  # SeriesSelection's validation rules this out
        raise ValueError("pick: description_regex needs a regex")
    reasons: list[str] = []
    matching: list[SeriesInfo] = []
    for series in candidates:
        value = series.attributes.get("SeriesDescription", ABSENT)
        values = values_of(value)
        subject = f"series {series.series_instance_uid} SeriesDescription"
        if not values:
            state = "absent" if value is ABSENT else "empty"
            reasons.append(f"{subject} is {state}: no")
            continue
        found = any(pattern.search(as_text(item)) for item in values)
        verdict = "yes" if found else "no"
        reasons.append(f"{subject} {show_value(value)} regex {pattern.pattern!r}: {verdict}")
        if found:
            matching.append(series)
    if not matching:
        reasons.append(
            f"no candidate series has a SeriesDescription matching {pattern.pattern!r}: no"
        )
        return Pick(None, tuple(reasons))
    chosen = min(matching, key=_most_instances_key)
    description = show_value(chosen.attributes["SeriesDescription"])
    reasons.append(
        f"picked series {chosen.series_instance_uid} "
        f"(description_regex, SeriesDescription {description}, {_instances(chosen)})"
    )
    return Pick(chosen, tuple(reasons))
