"""Evaluating one matcher on one attribute value.

Semantics (the rule language's, see :class:`dicomnode.config.rules.Matcher`):

- text compares ignoring case and surrounding spaces;
- a numeric ``equals``, ``one_of`` entry or ``range`` reads the value as a
  number; a value that is not a number does not match, with that reason;
- a multi-valued attribute matches when any of its values does;
- an absent attribute matches only ``exists: false``, and so does an empty one.

Nothing here raises on odd values: every outcome is a match or a non-match
with a reason an admin can read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from dicomnode.config.rules import Matcher, NumericRange

_SHOWN_CHARS = 64


class _Absent(Enum):
    ABSENT = "absent"


ABSENT: Final = _Absent.ABSENT
"""Stands for an attribute that is not in the header at all."""


@dataclass(frozen=True)
class MatchOutcome:
    """The result of one matcher on one value.

    Attributes
    ----------
    matched : bool
    reason : str
        One line saying what was checked and how it came out, e.g.
        ``series 1.2.3 Modality 'CT' equals 'CT': yes``.
    """

    matched: bool
    reason: str


def values_of(value: object) -> tuple[object, ...]:
    """The non-empty values of an attribute, one per value of a multi-valued one.

    Parameters
    ----------
    value : object
        What pydicom gives (str, number, PersonName, MultiValue or list) or
        :data:`ABSENT`.

    Returns
    -------
    tuple
        Empty for an absent attribute, ``None``, blank text or an empty list.
    """
    if value is ABSENT or value is None:
        return ()
    items: Sequence[object]
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        items = (value,)
    else:
        items = value
    kept: list[object] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, str | bytes) and not item.strip():
            continue
        if not isinstance(item, str | bytes | int | float):
            item = str(item)  # PersonName and other pydicom value types
            if not item.strip():
                continue
        kept.append(item)
    return tuple(kept)


def as_text(value: object) -> str:
    """A value as text without surrounding spaces (bytes decoded leniently)."""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip()
    return str(value).strip()


def as_number(value: object) -> float | None:
    """A value as a finite number, or ``None`` when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(as_text(value))
        except ValueError:
            return None
    return number if math.isfinite(number) else None


def show_value(value: object) -> str:
    """A value for an explanation line: text quoted, numbers bare, lists in brackets."""
    shown = values_of(value)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return _show_one(shown[0]) if shown else "''"
    return "[" + ", ".join(_show_one(item) for item in shown) + "]"


def _show_one(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    text = as_text(value)
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return repr(text)


def _show_number(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


def _show_operand(operand: str | float) -> str:
    if isinstance(operand, str):
        return repr(operand.strip())
    return _show_number(operand)


def describe_matcher(matcher: Matcher) -> str:
    """The matcher as an explanation shows it, e.g. ``one_of ['CT', 'MR']``."""
    if matcher.equals is not None:
        return f"equals {_show_operand(matcher.equals)}"
    if matcher.one_of is not None:
        return "one_of [" + ", ".join(_show_operand(item) for item in matcher.one_of) + "]"
    if matcher.regex is not None:
        return f"regex {matcher.regex.pattern!r}"
    if matcher.range is not None:
        return "range " + _show_range(matcher.range)
    return f"exists {'true' if matcher.exists else 'false'}"


def _show_range(bounds: NumericRange) -> str:
    parts = []
    if bounds.min is not None:
        parts.append(f"min {_show_number(bounds.min)}")
    if bounds.max is not None:
        parts.append(f"max {_show_number(bounds.max)}")
    return " ".join(parts)


def _equal(value: object, operand: str | float) -> bool:
    if isinstance(operand, str):
        return as_text(value).casefold() == operand.strip().casefold()
    number = as_number(value)
    return number is not None and math.isclose(number, operand, rel_tol=1e-9, abs_tol=1e-12)


def _not_numbers(values: tuple[object, ...]) -> str:
    shown = ", ".join(_show_one(item) for item in values)
    return f"{shown} is not a number" if len(values) == 1 else f"{shown} are not numbers"


def _test(matcher: Matcher, values: tuple[object, ...]) -> tuple[bool, str | None]:
    """Whether non-empty ``values`` satisfy ``matcher``, and a note on why not."""
    has_number = any(as_number(item) is not None for item in values)
    if matcher.equals is not None:
        operand = matcher.equals
        matched = any(_equal(item, operand) for item in values)
        numeric = not isinstance(operand, str)
        return matched, (_not_numbers(values) if numeric and not has_number else None)
    if matcher.one_of is not None:
        options = matcher.one_of
        matched = any(_equal(item, option) for item in values for option in options)
        all_numeric = all(not isinstance(option, str) for option in options)
        return matched, (_not_numbers(values) if all_numeric and not has_number else None)
    if matcher.regex is not None:
        pattern = matcher.regex
        return any(pattern.search(as_text(item)) for item in values), None
    if matcher.range is not None:
        low = -math.inf if matcher.range.min is None else matcher.range.min
        high = math.inf if matcher.range.max is None else matcher.range.max
        numbers = [n for n in (as_number(item) for item in values) if n is not None]
        matched = any(low <= number <= high for number in numbers)
        return matched, (None if numbers else _not_numbers(values))
    return bool(matcher.exists), None


def _verdict(matched: bool) -> str:
    return "yes" if matched else "no"


def evaluate(matcher: Matcher, value: object, subject: str) -> MatchOutcome:
    """Test one value with one matcher.

    Parameters
    ----------
    matcher : Matcher
        The validated matcher from the configuration.
    value : object
        The attribute's value as pydicom gives it, or :data:`ABSENT`.
    subject : str
        What is tested, for the reason line, e.g. ``"series 1.2.3 Modality"``.

    Returns
    -------
    MatchOutcome
        Never raises for odd values; a value that is not a number where one is
        needed is a non-match whose reason says so.
    """
    values = values_of(value)
    if not values:
        state = "absent" if value is ABSENT else "empty"
        if matcher.exists is not None:
            matched = matcher.exists is False
            return MatchOutcome(
                matched, f"{subject} is {state}, {describe_matcher(matcher)}: {_verdict(matched)}"
            )
        return MatchOutcome(False, f"{subject} is {state}: no")
    matched, note = _test(matcher, values)
    reason = f"{subject} {show_value(value)} {describe_matcher(matcher)}: {_verdict(matched)}"
    if note is not None and not matched:
        reason += f" ({note})"
    return MatchOutcome(matched, reason)


def evaluate_attribute(
    matcher: Matcher, attributes: Mapping[str, object], keyword: str, subject: str
) -> MatchOutcome:
    """Test the attribute ``keyword`` of a header with one matcher.

    Parameters
    ----------
    matcher : Matcher
    attributes : mapping of str to object
        Keyword to value; a keyword that is not there is absent.
    keyword : str
        The DICOM keyword to test.
    subject : str
        Prefix of the reason line, e.g. ``"study"`` or ``"series 1.2.3"``.

    Returns
    -------
    MatchOutcome
        Its reason starts with ``"<subject> <keyword>"``.
    """
    value = attributes[keyword] if keyword in attributes else ABSENT
    return evaluate(matcher, value, f"{subject} {keyword}")
