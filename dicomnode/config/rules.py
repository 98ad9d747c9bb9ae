"""Routing rules in the node YAML (schema only; the engine is :mod:`dicomnode.routing`).

A rule is data, never code: typed matchers (``equals``, ``one_of``, ``regex``,
``range``, ``exists``) over DICOM keywords, checked when the file is loaded so
that a typo in a keyword, two operators in one matcher or a broken regular
expression is an error naming its field path, e.g.
``routing.rules.0.match.series.Modalty: Modalty is not a DICOM keyword``.

::

    routing:
      rules:
        - name: ct-chest-lung
          match:
            calling_ae: {one_of: [CT1, PACS]}
            study:
              StudyDescription: {regex: "(?i)chest|thorax"}
            series:
              Modality: {equals: CT}
              SliceThickness: {range: {max: 3.0}}
          series: {pick: thinnest_slices}
          pipeline: ct-lung
          destinations: [pacs]
          notify: [ris]
          priority: 5
          completion: {quiet_seconds: 60}
          result_status: preliminary   # or final, only for verified results
          notify_after: delivered      # or written
          shadow: {pipeline: ct-lung-v2}   # a candidate run beside, never delivered
          out_of_range: flag           # or refuse: outside the validated input range
      fallback:
        name: fallback
        pipeline: qa-archive
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword

#: Value representations whose values are bytes, not text or numbers.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

#: The operators a matcher may use (exactly one per matcher).
OPERATORS = ("equals", "one_of", "regex", "range", "exists")


_YAML_BOOLEAN_HINT = (
    "YAML reads unquoted yes/no/on/off/true/false as a boolean; "
    "quote the value (e.g. 'NO') to compare it as text"
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: object) -> object:
        # A key written with nothing after it is null in YAML: treat it as left out.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


def _error(kind: str, loc: tuple[str | int, ...], message: str, value: object) -> InitErrorDetails:
    """One validation error at ``loc`` (relative to the value being validated)."""
    return InitErrorDetails(
        type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value
    )


def _compile_regex(value: object) -> object:
    if isinstance(value, str):
        try:
            return re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
    return value


def _not_boolean(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(_YAML_BOOLEAN_HINT)
    return value


def _not_blank(value: object) -> object:
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            raise ValueError("must not be empty or only spaces")
        return stripped
    return value


def _scalar(value: object) -> object:
    value = _not_boolean(value)
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty; use {exists: false} to require an empty attribute")
    return value


Regex = Annotated[re.Pattern[str], BeforeValidator(_compile_regex)]
"""A Python regular expression, compiled when the configuration is loaded."""

Scalar = Annotated[str | int | float, BeforeValidator(_scalar)]
"""A value to compare with: text (case and surrounding spaces ignored) or a number."""

Name = Annotated[str, BeforeValidator(_not_blank)]


class NumericRange(_Model):
    """Inclusive bounds for ``range``; at least one of them."""

    min: Annotated[float | None, BeforeValidator(_not_boolean)] = None
    max: Annotated[float | None, BeforeValidator(_not_boolean)] = None

    @model_validator(mode="after")
    def _bounds(self) -> NumericRange:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) must not be greater than max ({self.max:g})")
        return self


class Matcher(_Model):
    """A test on one attribute, with exactly one operator.

    Attributes
    ----------
    equals : str or number, optional
        Text compares ignoring case and surrounding spaces; a number compares
        numerically with the attribute's value read as a number.
    one_of : tuple of str or number, optional
        Like ``equals`` with any of the listed values.
    regex : compiled regular expression, optional
        Searched (:func:`re.search`) in the value without surrounding spaces;
        case matters unless the pattern says ``(?i)``.
    range : NumericRange, optional
        The value read as a number lies within ``min`` and ``max`` (inclusive).
    exists : bool, optional
        ``true``: present and not empty; ``false``: absent or empty.

    A multi-valued attribute satisfies ``equals``, ``one_of``, ``regex`` and
    ``range`` when any of its values does.
    """

    equals: Scalar | None = None
    one_of: Annotated[tuple[Scalar, ...], Field(min_length=1)] | None = None
    regex: Regex | None = None
    range: NumericRange | None = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _exactly_one_operator(self) -> Matcher:
        given = [name for name in OPERATORS if getattr(self, name) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(
                f"a matcher needs exactly one of {', '.join(OPERATORS)} (found: {found})"
            )
        return self

    @property
    def operator(self) -> str:
        """The name of the operator this matcher uses."""
        return next(name for name in OPERATORS if getattr(self, name) is not None)


@cache
def _close_keywords(keyword: str) -> tuple[str, ...]:
    return tuple(difflib.get_close_matches(keyword, keyword_dict, n=3, cutoff=0.8))


def keyword_problem(keyword: str) -> str | None:
    """Why ``keyword`` cannot be matched on, or ``None`` when it can.

    Parameters
    ----------
    keyword : str
        A DICOM keyword such as ``Modality``.

    Returns
    -------
    str or None
        A message for the admin, or ``None`` for a usable keyword.
    """
    tag = tag_for_keyword(keyword)
    if tag is None:
        close = _close_keywords(keyword)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return f"{keyword!r} is not a DICOM keyword{hint}"
    vrs = set(dictionary_VR(tag).split(" or "))
    if "SQ" in vrs:
        return f"{keyword} is a sequence; rules match only plain attributes"
    if vrs & BINARY_VRS:
        return f"{keyword} holds binary data; rules match only text and numbers"
    return None


def _keyword_errors(value: object) -> list[InitErrorDetails]:
    if not isinstance(value, Mapping):
        return []
    errors: list[InitErrorDetails] = []
    for key in value:
        if not isinstance(key, str):
            continue  # the mapping's own validation reports it
        problem = keyword_problem(key)
        if problem is not None:
            errors.append(_error("dicom_keyword", (key,), problem, value[key]))
    return errors


def _reraise(errors: list[InitErrorDetails], exc: ValidationError) -> NoReturn:
    """Raise ``errors`` together with those of ``exc``, each at its own location."""
    merged = errors + [
        _error(err["type"], err["loc"], err["msg"], err["input"]) for err in exc.errors()
    ]
    raise ValidationError.from_exception_data(exc.title, merged) from None


def _check_keywords(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    # Keyword errors carry the keyword in their location, so they read
    # "routing.rules.0.match.series.Modalty: ..." like any other field error.
    errors = _keyword_errors(value)
    try:
        result = handler(value)
    except ValidationError as exc:
        _reraise(errors, exc)
    if errors:
        raise ValidationError.from_exception_data("keywords", errors)
    return result


KeywordMatchers = Annotated[dict[str, Matcher], WrapValidator(_check_keywords)]
"""DICOM keyword to matcher; every keyword is checked against pydicom's dictionary."""


class RuleMatch(_Model):
    """What a study must look like for a rule to apply.

    Attributes
    ----------
    calling_ae : Matcher, optional
        Tested on the calling AE title the study arrived from.
    study : mapping of keyword to Matcher
        Tested on the study-level attributes (the header of one of its instances).
    series : mapping of keyword to Matcher
        A series is a candidate input when it satisfies all of them; the rule
        applies when at least one series is a candidate.
    """

    calling_ae: Matcher | None = None
    study: KeywordMatchers = Field(default_factory=dict)
    series: KeywordMatchers = Field(default_factory=dict)


class SeriesSelection(_Model):
    """How a rule picks its input series among the candidate series.

    Attributes
    ----------
    pick : {"most_instances", "thinnest_slices", "description_regex"}
        ``most_instances``: the series with the most instances;
        ``thinnest_slices``: the smallest SliceThickness, then most instances;
        ``description_regex``: a series whose SeriesDescription matches
        ``regex``, then most instances.
    regex : compiled regular expression, optional
        Required by, and only allowed with, ``description_regex``.
    """

    pick: Literal["most_instances", "thinnest_slices", "description_regex"] = "most_instances"
    regex: Regex | None = None

    @model_validator(mode="after")
    def _regex_with_description_regex(self) -> SeriesSelection:
        if self.pick == "description_regex" and self.regex is None:
            raise ValueError("pick: description_regex needs a regex")
        if self.pick != "description_regex" and self.regex is not None:
            raise ValueError(f"regex is used only with pick: description_regex, not {self.pick}")
        return self


class CompletionOverride(_Model):
    """Per-rule assembly timing (see ``assembly``); unset values keep the defaults."""

    quiet_seconds: float | None = Field(default=None, gt=0)
    max_wait_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> CompletionOverride:
        if self.quiet_seconds is None and self.max_wait_seconds is None:
            raise ValueError("completion needs quiet_seconds, max_wait_seconds or both")
        if (
            self.quiet_seconds is not None
            and self.max_wait_seconds is not None
            and self.max_wait_seconds < self.quiet_seconds
        ):
            raise ValueError(
                f"max_wait_seconds ({self.max_wait_seconds:g}) must not be smaller than "
                f"quiet_seconds ({self.quiet_seconds:g})"
            )
        return self


class ShadowCandidate(_Model):
    """A candidate pipeline run in shadow mode beside the rule's pipeline.

    It runs on the same series of every study the rule matches; its results
    are written and kept (marked shadow) but never delivered: no DICOM
    export, no HL7. How far it agrees with the production pipeline
    accumulates per rule (``dicomnode shadow report``).

    Attributes
    ----------
    pipeline : str
        The candidate pipeline (another pipeline, or the same one installed
        under another name with another model or manifest version).
    """

    pipeline: Name


def _unique_names(values: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


Names = Annotated[tuple[Name, ...], AfterValidator(_unique_names)]


class Rule(_Model):
    """One routing rule: when a study matches, run ``pipeline`` on one series.

    The fallback is a rule too, written without ``match``.

    Attributes
    ----------
    name : str
        Unique among the rules and the fallback; recorded with every run it causes.
    match : RuleMatch
        The conditions; empty means every study with at least one series.
    series : SeriesSelection
        How the input series is picked among the candidates.
    pipeline : str
        The pipeline to run.
    destinations, notify : tuple of str
        Where results go (DICOM peers) and who is told (HL7 peers), by name.
    priority : int
        Runs of higher priority are queued first.
    completion : CompletionOverride, optional
        Assembly timing for studies this rule matches.
    result_status : {"preliminary", "final"}
        How the results travel: ``preliminary`` (the default) marks them as
        not verified by a physician (SR Preliminary Flag PRELIMINARY, ORU
        result status P); ``final`` only where the site has decided that this
        rule's results count as verified (SR FINAL, ORU F). A result that
        replaces one a RIS already received travels as a correction (C).
    notify_after : {"delivered", "written"}
        When the notification (ORU) is sent: ``delivered`` (the default) once
        the objects it names reached every one of ``destinations`` (never if
        they end DEAD); ``written`` as soon as the results are written.
    shadow : ShadowCandidate, optional
        A candidate pipeline to run beside ``pipeline`` without delivering
        anything, for comparison (shadow mode).
    out_of_range : {"flag", "refuse"}
        What a study outside the pipeline's validated input range gets:
        ``flag`` (the default) runs it and says so in the SR and the ORU;
        ``refuse`` ends the run without a result, with the reason.
    """

    name: Name
    match: RuleMatch = RuleMatch()
    series: SeriesSelection = SeriesSelection()
    pipeline: Name
    destinations: Names = ()
    notify: Names = ()
    priority: int = Field(default=0, description="Higher runs first.")
    completion: CompletionOverride | None = None
    result_status: Literal["preliminary", "final"] = Field(
        default="preliminary",
        description="preliminary (not verified; the default) or final (the site counts this "
        "rule's results as verified).",
    )
    notify_after: Literal["delivered", "written"] = Field(
        default="delivered",
        description="Send the ORU once the objects it names are delivered (default), or as "
        "soon as they are written.",
    )
    shadow: ShadowCandidate | None = None
    out_of_range: Literal["flag", "refuse"] = Field(
        default="flag",
        description="flag (run, and say so in the SR and ORU; the default) or refuse a study "
        "outside the pipeline's validated input range.",
    )

    @model_validator(mode="after")
    def _candidate_differs(self) -> Rule:
        if self.shadow is not None and self.shadow.pipeline == self.pipeline:
            raise ValueError(
                f"shadow.pipeline: the candidate must differ from the rule's pipeline "
                f"({self.pipeline!r})"
            )
        return self


def _check_fallback(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    # The fallback is a Rule whose match is empty (as model_dump() writes it back).
    rule = handler(value)
    if isinstance(rule, Rule) and rule.match != RuleMatch():
        raise ValidationError.from_exception_data(
            "fallback",
            [
                _error(
                    "fallback_match",
                    ("match",),
                    "the fallback has no match: it applies exactly when no rule matched",
                    rule.match,
                )
            ],
        )
    return rule


class RoutingConfig(_Model):
    """The ordered rule list and the optional fallback.

    Every rule that matches a study gives one pipeline run; the fallback
    applies only when none did. A study that neither matches a rule nor has a
    fallback is discarded.
    """

    rules: tuple[Rule, ...] = ()
    fallback: Annotated[Rule | None, WrapValidator(_check_fallback)] = None

    @model_validator(mode="after")
    def _unique_rule_names(self) -> RoutingConfig:
        errors: list[InitErrorDetails] = []
        first: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.name in first:
                errors.append(
                    _error(
                        "duplicate_rule_name",
                        ("rules", index, "name"),
                        f"rule name {rule.name!r} is already used by rules.{first[rule.name]}",
                        rule,
                    )
                )
            else:
                first[rule.name] = index
        if self.fallback is not None and self.fallback.name in first:
            errors.append(
                _error(
                    "duplicate_rule_name",
                    ("fallback", "name"),
                    f"the fallback's name {self.fallback.name!r} is already used by "
                    f"rules.{first[self.fallback.name]}",
                    self.fallback,
                )
            )
        if errors:
            raise ValidationError.from_exception_data("routing", errors)
        return self
