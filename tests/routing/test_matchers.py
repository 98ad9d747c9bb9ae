"""One matcher on one value: operators, normalisation, multi-values, absent tags."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat, PersonName

from dicomnode.config.rules import Matcher
from dicomnode.routing.matchers import ABSENT, evaluate, evaluate_attribute, values_of


def check(spec: dict[str, Any], value: object) -> tuple[bool, str]:
    outcome = evaluate(Matcher.model_validate(spec), value, "series 1.2 Attr")
    return outcome.matched, outcome.reason


@pytest.mark.parametrize(
    ("spec", "value", "matched"),
    [
        ({"equals": "CT"}, "CT", True),
        ({"equals": "ct"}, "  CT ", True),
        ({"equals": " Chest "}, "CHEST", True),
        ({"equals": "CT"}, "MR", False),
        ({"equals": "CT"}, "CTA", False),
        ({"equals": 2.5}, DSfloat("2.50"), True),
        ({"equals": 3}, IS("3"), True),
        ({"equals": 3}, "3.0", True),
        ({"equals": 3}, 3.0000001, False),
        ({"equals": "3"}, IS("3"), True),
        ({"one_of": ["CHEST", "LUNG"]}, "lung", True),
        ({"one_of": ["CHEST", "LUNG"]}, "ABDOMEN", False),
        ({"one_of": ["CHEST", 2.5]}, DSfloat("2.5"), True),
        ({"one_of": [1, 2]}, "2", True),
        ({"regex": "(?i)chest|thorax"}, "CT THORAX W/O", True),
        ({"regex": "chest"}, "CT CHEST", False),
        ({"regex": "^CT$"}, "  CT  ", True),
        ({"range": {"max": 3.0}}, DSfloat("2.5"), True),
        ({"range": {"max": 3.0}}, DSfloat("3.0"), True),
        ({"range": {"max": 3.0}}, DSfloat("5"), False),
        ({"range": {"min": 1, "max": 3}}, "0.5", False),
        ({"range": {"min": 1}}, 1000, True),
        ({"exists": True}, "x", True),
        ({"exists": True}, "", False),
        ({"exists": True}, "   ", False),
        ({"exists": True}, None, False),
        ({"exists": True}, [], False),
        ({"exists": False}, "", True),
        ({"exists": False}, "x", False),
    ],
)
def test_operators(spec: dict[str, Any], value: object, matched: bool) -> None:
    assert check(spec, value)[0] is matched


def test_reason_names_subject_value_operator_and_verdict() -> None:
    assert check({"regex": "(?i)chest"}, "CT CHEST") == (
        True,
        "series 1.2 Attr 'CT CHEST' regex '(?i)chest': yes",
    )
    assert check({"one_of": ["CT1", "PACS"]}, "CT2") == (
        False,
        "series 1.2 Attr 'CT2' one_of ['CT1', 'PACS']: no",
    )
    assert check({"range": {"min": 0.5, "max": 3}}, DSfloat("2.5"))[1].endswith(
        "2.5 range min 0.5 max 3: yes"
    )


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ({"equals": "ORIGINAL"}, ["DERIVED", "ORIGINAL"]),
        ({"one_of": ["AXIAL", "LOCALIZER"]}, MultiValue(str, ["ORIGINAL", "PRIMARY", "AXIAL"])),
        ({"regex": "^LOCAL"}, ("ORIGINAL", "PRIMARY", "LOCALIZER")),
        ({"range": {"min": 100}}, MultiValue(float, [40.0, 400.0])),
        ({"equals": 400}, MultiValue(DSfloat, ["40", "400"])),
    ],
)
def test_multi_valued_matches_when_any_value_does(spec: dict[str, Any], value: object) -> None:
    matched, reason = check(spec, value)
    assert matched, reason


def test_multi_valued_without_a_matching_value() -> None:
    matched, reason = check({"equals": "LOCALIZER"}, ["ORIGINAL", "PRIMARY", "AXIAL"])
    assert not matched
    assert "['ORIGINAL', 'PRIMARY', 'AXIAL'] equals 'LOCALIZER': no" in reason


@pytest.mark.parametrize(
    "spec",
    [
        {"equals": "CT"},
        {"one_of": ["CT"]},
        {"regex": "."},
        {"range": {"min": 0}},
        {"exists": True},
    ],
)
def test_absent_tag_is_a_non_match_with_a_reason(spec: dict[str, Any]) -> None:
    matched, reason = check(spec, ABSENT)
    assert not matched
    assert "Attr is absent" in reason and reason.endswith("no")


def test_absent_tag_matches_exists_false() -> None:
    assert check({"exists": False}, ABSENT) == (
        True,
        "series 1.2 Attr is absent, exists false: yes",
    )


def test_evaluate_attribute_reads_the_keyword_from_the_header() -> None:
    matcher = Matcher.model_validate({"equals": "CHEST"})
    header = {"BodyPartExamined": "chest"}
    present = evaluate_attribute(matcher, header, "BodyPartExamined", "series 1.2")
    absent = evaluate_attribute(matcher, {}, "BodyPartExamined", "series 1.2")
    assert present.matched and present.reason.startswith("series 1.2 BodyPartExamined 'chest'")
    assert not absent.matched
    assert absent.reason == "series 1.2 BodyPartExamined is absent: no"


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ({"range": {"max": 3}}, "THIN"),
        ({"range": {"max": 3}}, ["A", "B"]),
        ({"equals": 2.5}, "two and a half"),
        ({"one_of": [1, 2]}, "one"),
        ({"range": {"max": 3}}, b"\x00\x01"),
        ({"range": {"max": 3}}, "nan"),
    ],
)
def test_non_numeric_value_is_a_non_match_not_an_exception(
    spec: dict[str, Any], value: object
) -> None:
    matched, reason = check(spec, value)
    assert not matched
    assert "not a number" in reason or "not numbers" in reason


def test_numeric_range_uses_any_numeric_value_of_a_mixed_list() -> None:
    assert check({"range": {"max": 3}}, ["n/a", "2"])[0]


def test_person_names_compare_as_text() -> None:
    assert check({"regex": "^DOE\\^"}, PersonName("DOE^JOHN"))[0]
    assert check({"equals": "doe^john"}, PersonName("DOE^JOHN"))[0]


def test_values_of_drops_empty_values() -> None:
    assert values_of(ABSENT) == ()
    assert values_of(None) == ()
    assert values_of("  ") == ()
    assert values_of(["", "A", None, " "]) == ("A",)
    assert values_of(PersonName("A^B")) == ("A^B",)
    assert values_of(3) == (3,)


def test_long_values_are_shortened_in_reasons() -> None:
    _, reason = check({"equals": "x"}, "A" * 500)
    assert len(reason) < 150 and "..." in reason
