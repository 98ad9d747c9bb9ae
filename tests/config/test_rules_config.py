"""The `routing:` section: the rule language's schema and its errors, through parse_config."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from dicomnode.config import parse_config
from dicomnode.config.rules import Matcher, RoutingConfig, Rule
from dicomnode.errors import ConfigError

EXAMPLE = """
routing:
  rules:
    - name: ct-chest-lung
      match:
        calling_ae: {one_of: [CT1, PACS]}
        study:
          StudyDescription: {regex: "(?i)chest|thorax"}
        series:
          Modality: {equals: CT}
          BodyPartExamined: {one_of: [CHEST, LUNG, THORAX]}
          SliceThickness: {range: {max: 3.0}}
          ImageType: {exists: true}
      series: {pick: most_instances}
      pipeline: ct-lung
      destinations: [pacs]
      notify: [ris]
      priority: 5
      completion: {quiet_seconds: 60, max_wait_seconds: 7200}
    - name: cxr
      match:
        series:
          Modality: {one_of: [CR, DX]}
      series: {pick: description_regex, regex: "(?i)pa|ap"}
      pipeline: cxr-triage
  fallback:
    name: fallback
    pipeline: archive
    destinations: [vna]
destinations:
  pacs: {type: dicom, ae_title: PACS, host: 10.0.0.1, port: 104}
  vna: {type: folder, path: /srv/vna}
  ris: {type: hl7, host: 10.0.0.2, port: 2575}
"""


def routing_problems(section: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"routing": section})
    return info.value.problems


def one_rule(**fields: Any) -> dict[str, Any]:
    return {"rules": [{"name": "r", "pipeline": "p", **fields}]}


def series_matchers(**matchers: Any) -> dict[str, Any]:
    return one_rule(match={"series": matchers})


def test_the_documented_example_loads() -> None:
    routing = parse_config(yaml.safe_load(EXAMPLE)).routing
    first, second = routing.rules
    assert first.name == "ct-chest-lung" and first.pipeline == "ct-lung"
    assert first.match.calling_ae == Matcher(one_of=("CT1", "PACS"))
    study_regex = first.match.study["StudyDescription"].regex
    assert isinstance(study_regex, re.Pattern) and study_regex.search("CT THORAX")
    assert first.match.series["SliceThickness"].range is not None
    assert first.match.series["SliceThickness"].range.max == 3.0
    assert first.match.series["ImageType"].exists is True
    assert first.destinations == ("pacs",) and first.notify == ("ris",)
    assert first.priority == 5
    assert first.completion is not None and first.completion.max_wait_seconds == 7200
    assert second.series.pick == "description_regex"
    assert second.destinations == () and second.priority == 0 and second.completion is None
    assert routing.fallback is not None and routing.fallback.name == "fallback"
    assert routing.fallback.match.series == {}


def test_defaults() -> None:
    assert parse_config(None).routing == RoutingConfig()
    assert parse_config({"routing": None}).routing.rules == ()
    assert parse_config({"routing": {"rules": None}}).routing.rules == ()
    rule = parse_config({"routing": one_rule()}).routing.rules[0]
    assert rule == Rule(name="r", pipeline="p")
    assert rule.series.pick == "most_instances"
    assert rule.match.calling_ae is None and rule.match.study == {} and rule.match.series == {}


def test_a_dumped_configuration_loads_again() -> None:
    settings = parse_config(yaml.safe_load(EXAMPLE))
    again = parse_config(settings.model_dump(mode="json"))
    assert again.routing == settings.routing
    empty_match = {"name": "f", "pipeline": "q", "match": {"study": {}, "series": None}}
    assert parse_config({"routing": {"fallback": empty_match}}).routing.fallback is not None


def test_models_are_frozen() -> None:
    rule = Rule(name="r", pipeline="p")
    with pytest.raises(ValueError, match="frozen"):
        rule.name = "other"


@pytest.mark.parametrize(
    ("section", "path", "words"),
    [
        (
            series_matchers(Modalty={"equals": "CT"}),
            "routing.rules.0.match.series.Modalty",
            "did you mean Modality",
        ),
        (
            one_rule(match={"study": {"StudyDescriptio": {"regex": "x"}}}),
            "routing.rules.0.match.study.StudyDescriptio",
            "not a DICOM keyword",
        ),
        (
            series_matchers(ReferencedImageSequence={"exists": True}),
            "routing.rules.0.match.series.ReferencedImageSequence",
            "sequence",
        ),
        (
            series_matchers(PixelData={"exists": True}),
            "routing.rules.0.match.series.PixelData",
            "binary",
        ),
        (
            series_matchers(Modality={"equals": "CT", "regex": "CT"}),
            "routing.rules.0.match.series.Modality",
            "exactly one of equals, one_of, regex, range, exists (found: equals, regex)",
        ),
        (
            series_matchers(Modality={}),
            "routing.rules.0.match.series.Modality",
            "found: none",
        ),
        (
            series_matchers(Modality={"equal": "CT"}),
            "routing.rules.0.match.series.Modality.equal",
            "Extra inputs",
        ),
        (
            one_rule(match={"study": {"StudyDescription": {"regex": "(chest"}}}),
            "routing.rules.0.match.study.StudyDescription.regex",
            "invalid regular expression",
        ),
        (
            series_matchers(SliceThickness={"range": {"min": 5, "max": 1}}),
            "routing.rules.0.match.series.SliceThickness.range",
            "min (5) must not be greater than max (1)",
        ),
        (
            series_matchers(SliceThickness={"range": {}}),
            "routing.rules.0.match.series.SliceThickness.range",
            "needs min, max or both",
        ),
        (
            series_matchers(SliceThickness={"range": {"max": "thin"}}),
            "routing.rules.0.match.series.SliceThickness.range.max",
            "valid number",
        ),
        (
            series_matchers(Modality={"one_of": []}),
            "routing.rules.0.match.series.Modality.one_of",
            "at least 1",
        ),
        (
            series_matchers(PatientSex={"equals": False}),
            "routing.rules.0.match.series.PatientSex.equals",
            "quote the value",
        ),
        (
            series_matchers(Modality={"equals": "  "}),
            "routing.rules.0.match.series.Modality.equals",
            "exists: false",
        ),
        (
            one_rule(match={"calling_ae": {"one_of": "CT1"}}),
            "routing.rules.0.match.calling_ae.one_of",
            "valid tuple",
        ),
        (
            one_rule(series={"pick": "description_regex"}),
            "routing.rules.0.series",
            "description_regex needs a regex",
        ),
        (
            one_rule(series={"pick": "most_instances", "regex": "x"}),
            "routing.rules.0.series",
            "only with pick: description_regex",
        ),
        (
            one_rule(series={"pick": "description_regex", "regex": "[a-"}),
            "routing.rules.0.series.regex",
            "invalid regular expression",
        ),
        (one_rule(series={"pick": "newest"}), "routing.rules.0.series.pick", "most_instances"),
        (
            one_rule(completion={"quiet_seconds": 600, "max_wait_seconds": 60}),
            "routing.rules.0.completion",
            "must not be smaller than quiet_seconds",
        ),
        (
            one_rule(completion={"quiet_seconds": 0}),
            "routing.rules.0.completion.quiet_seconds",
            "greater than 0",
        ),
        (one_rule(completion={}), "routing.rules.0.completion", "quiet_seconds, max_wait_seconds"),
        (one_rule(destinations=["pacs", "pacs"]), "routing.rules.0.destinations", "twice"),
        (one_rule(priority="high"), "routing.rules.0.priority", "valid integer"),
        (one_rule(name=" "), "routing.rules.0.name", "empty"),
        (one_rule(matches={}), "routing.rules.0.matches", "Extra inputs"),
        ({"rules": [{"name": "r"}]}, "routing.rules.0.pipeline", "Field required"),
        ({"rules": [{"pipeline": "p"}]}, "routing.rules.0.name", "Field required"),
        (
            {"rules": [{"name": "a", "pipeline": "p"}, {"name": "a", "pipeline": "q"}]},
            "routing.rules.1.name",
            "rule name 'a' is already used by rules.0",
        ),
        (
            {"rules": [{"name": "a", "pipeline": "p"}], "fallback": {"name": "a", "pipeline": "q"}},
            "routing.fallback.name",
            "already used by rules.0",
        ),
        (
            {"fallback": {"name": "f", "pipeline": "q", "match": {"calling_ae": {"equals": "X"}}}},
            "routing.fallback.match",
            "the fallback has no match",
        ),
        ({"rule": []}, "routing.rule", "Extra inputs"),
    ],
)
def test_errors_name_the_field_path(section: Any, path: str, words: str) -> None:
    found = routing_problems(section)
    assert any(p.startswith(path + ":") and words in p for p in found), found


def test_every_routing_error_is_reported_at_once() -> None:
    found = routing_problems(
        {
            "rules": [
                {
                    "name": "r",
                    "pipeline": "p",
                    "match": {
                        "series": {
                            "Modalty": {"equals": "CT"},
                            "BodyPartExamined": {"equals": "CHEST", "one_of": ["LUNG"]},
                        },
                        "study": {"StudyDescription": {"regex": "("}},
                    },
                }
            ],
            "fallback": {"name": "f"},
        }
    )
    paths = sorted(p.split(":")[0] for p in found)
    assert paths == [
        "routing.fallback.pipeline",
        "routing.rules.0.match.series.BodyPartExamined",
        "routing.rules.0.match.series.Modalty",
        "routing.rules.0.match.study.StudyDescription.regex",
    ]


def test_keyword_errors_do_not_repeat_the_value() -> None:
    (problem,) = routing_problems(series_matchers(Modalty={"equals": "CT"}))
    assert problem == (
        "routing.rules.0.match.series.Modalty: 'Modalty' is not a DICOM keyword "
        "(did you mean Modality?)"
    )


def test_yaml_booleans_must_be_quoted_to_be_text() -> None:
    data = yaml.safe_load(
        "routing:\n  rules:\n    - {name: r, pipeline: p, match: "
        "{series: {PatientSex: {one_of: [M, F, NO]}}}}\n"
    )
    found = routing_problems(data["routing"])
    assert any(p.startswith("routing.rules.0.match.series.PatientSex.one_of.2") for p in found)
    quoted = yaml.safe_load("{one_of: [M, F, 'NO']}")
    assert Matcher.model_validate(quoted).one_of == ("M", "F", "NO")


def test_numbers_stay_numbers_and_text_stays_text() -> None:
    matcher = Matcher.model_validate(yaml.safe_load("{one_of: [1, 2.5, '3', CT]}"))
    assert matcher.one_of == (1, 2.5, "3", "CT")
    assert matcher.operator == "one_of"
