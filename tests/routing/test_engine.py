"""Routing decisions: several matches, fallback, discard, series picking, explain, timing."""

from __future__ import annotations

from typing import Any

import pytest

from dicomnode.config.rules import RoutingConfig
from dicomnode.routing import (
    PlannedRun,
    SeriesInfo,
    StudyInfo,
    completion_for,
    explain_text,
    route,
)

CT_THIN = SeriesInfo(
    "1.2.3.1",
    {
        "Modality": "CT",
        "BodyPartExamined": "CHEST",
        "SliceThickness": "1.0",
        "SeriesDescription": "Lung 1.0 B70f",
        "ImageType": ("ORIGINAL", "PRIMARY", "AXIAL"),
    },
    300,
)
CT_THICK = SeriesInfo(
    "1.2.3.2",
    {
        "Modality": "CT",
        "BodyPartExamined": "CHEST",
        "SliceThickness": "5.0",
        "SeriesDescription": "Mediastinum 5.0",
        "ImageType": ("ORIGINAL", "PRIMARY", "AXIAL"),
    },
    60,
)
SCOUT = SeriesInfo(
    "1.2.3.3",
    {"Modality": "CT", "SeriesDescription": "Topogram", "ImageType": ["ORIGINAL", "LOCALIZER"]},
    1,
)
CHEST_CT = StudyInfo(
    "1.2.3",
    "CT1",
    {"StudyDescription": "CT CHEST W/O", "Modality": "CT", "PatientAge": "061Y"},
    (CT_THIN, CT_THICK, SCOUT),
)
CXR = StudyInfo(
    "1.2.4",
    "CR1",
    {"StudyDescription": "XR CHEST PA"},
    (SeriesInfo("1.2.4.1", {"Modality": "DX", "BodyPartExamined": "CHEST"}, 1),),
)


def routing(rules: list[dict[str, Any]], fallback: dict[str, Any] | None = None) -> RoutingConfig:
    section: dict[str, Any] = {"rules": rules}
    if fallback is not None:
        section["fallback"] = fallback
    return RoutingConfig.model_validate(section)


CT_LUNG = {
    "name": "ct-chest-lung",
    "match": {
        "calling_ae": {"one_of": ["CT1", "PACS"]},
        "study": {"StudyDescription": {"regex": "(?i)chest|thorax"}},
        "series": {
            "Modality": {"equals": "CT"},
            "BodyPartExamined": {"one_of": ["CHEST", "LUNG", "THORAX"]},
            "SliceThickness": {"range": {"max": 3.0}},
        },
    },
    "pipeline": "ct-lung",
    "destinations": ["pacs"],
    "notify": ["ris"],
    "priority": 5,
}
CT_ANY = {"name": "ct-qa", "match": {"series": {"Modality": {"equals": "CT"}}}, "pipeline": "qa"}
CXR_RULE = {
    "name": "cxr",
    "match": {"series": {"Modality": {"one_of": ["CR", "DX"]}}},
    "pipeline": "cxr-triage",
    "destinations": ["pacs"],
}
FALLBACK = {"name": "archive-all", "pipeline": "archive", "destinations": ["vna"]}


def test_one_rule_one_run_on_the_matching_series() -> None:
    decision = route(CHEST_CT, routing([CT_LUNG]))
    assert decision.runs == (
        PlannedRun("ct-chest-lung", "ct-lung", "1.2.3.1", ("pacs",), ("ris",), 5),
    )
    assert not decision.used_fallback and not decision.discarded
    assert decision.study_instance_uid == "1.2.3"


def test_every_matching_rule_gives_a_run_highest_priority_first() -> None:
    decision = route(CHEST_CT, routing([CT_ANY, CXR_RULE, CT_LUNG], FALLBACK))
    assert [r.rule for r in decision.runs] == ["ct-chest-lung", "ct-qa"]
    assert [e.rule for e in decision.explanations] == ["ct-qa", "cxr", "ct-chest-lung"]
    assert [e.matched for e in decision.explanations] == [True, False, True]
    assert not decision.used_fallback


def test_equal_priorities_keep_configuration_order() -> None:
    second = {**CT_ANY, "name": "ct-qa-2", "pipeline": "qa2"}
    decision = route(CHEST_CT, routing([CT_ANY, second]))
    assert [r.rule for r in decision.runs] == ["ct-qa", "ct-qa-2"]


def test_fallback_only_when_no_rule_matched() -> None:
    config = routing([CT_LUNG, CXR_RULE], FALLBACK)
    mr = StudyInfo("9.9", "MR1", {}, (SeriesInfo("9.9.1", {"Modality": "MR"}, 20),))
    decision = route(mr, config)
    assert decision.used_fallback
    assert decision.runs == (PlannedRun("archive-all", "archive", "9.9.1", ("vna",), (), 0),)
    assert decision.explanations[-1].is_fallback and decision.explanations[-1].matched
    matched = route(CXR, config)
    assert [r.rule for r in matched.runs] == ["cxr"]
    assert not matched.used_fallback
    assert all(not e.is_fallback for e in matched.explanations)


def test_no_match_and_no_fallback_means_discard() -> None:
    mr = StudyInfo("9.9", "MR1", {}, (SeriesInfo("9.9.1", {"Modality": "MR"}, 20),))
    decision = route(mr, routing([CT_LUNG, CXR_RULE]))
    assert decision.runs == () and decision.discarded and not decision.used_fallback
    assert "no rule matched: the study will be DISCARDED" in explain_text(decision)


def test_no_rules_at_all_discards() -> None:
    decision = route(CHEST_CT, RoutingConfig())
    assert decision.discarded
    assert "DISCARDED" in explain_text(decision)


def test_calling_ae_mismatch_blocks_the_rule() -> None:
    from_pacs = StudyInfo("1.2.3", "OTHER", CHEST_CT.attributes, CHEST_CT.series)
    decision = route(from_pacs, routing([CT_LUNG]))
    assert decision.discarded
    reasons = decision.explanations[0].reasons
    assert "calling_ae 'OTHER' one_of ['CT1', 'PACS']: no" in reasons


def test_study_matcher_on_absent_attribute_is_a_non_match() -> None:
    rule = {**CT_ANY, "match": {"study": {"AccessionNumber": {"exists": True}}}}
    decision = route(CHEST_CT, routing([rule]))
    assert decision.discarded
    assert "study AccessionNumber is absent, exists true: no" in decision.explanations[0].reasons


def test_rule_without_matchers_matches_every_study_with_a_series() -> None:
    config = routing([{"name": "all", "pipeline": "p"}])
    assert route(CHEST_CT, config).runs[0].series_instance_uid == "1.2.3.1"
    empty = StudyInfo("5.5", "CT1", {}, ())
    decision = route(empty, config)
    assert decision.discarded
    assert "the study has no series: no" in decision.explanations[0].reasons


def test_series_must_satisfy_all_series_matchers_at_once() -> None:
    # One series is thin, another one is CHEST: no single series is both.
    mixed = StudyInfo(
        "7.7",
        "CT1",
        {"StudyDescription": "chest"},
        (
            SeriesInfo("7.7.1", {"Modality": "CT", "SliceThickness": "1"}, 100),
            SeriesInfo(
                "7.7.2", {"Modality": "CT", "BodyPartExamined": "CHEST", "SliceThickness": "5"}, 100
            ),
        ),
    )
    decision = route(mixed, routing([CT_LUNG]))
    assert decision.discarded
    reasons = decision.explanations[0].reasons
    assert "series 7.7.1 BodyPartExamined is absent: no" in reasons
    assert "series 7.7.2 SliceThickness '5' range max 3: no" in reasons
    assert "no series satisfies all series matchers: no" in reasons


# -- series picking -------------------------------------------------------------


def picked(pick: dict[str, Any], study: StudyInfo = CHEST_CT) -> tuple[str | None, list[str]]:
    decision = route(study, routing([{"name": "r", "pipeline": "p", "series": pick}]))
    uid = decision.runs[0].series_instance_uid if decision.runs else None
    return uid, list(decision.explanations[0].reasons)


def test_pick_most_instances_is_the_default() -> None:
    uid, reasons = picked({})
    assert uid == "1.2.3.1"
    assert reasons[-1] == "picked series 1.2.3.1 (most_instances, 300 instances)"


def test_pick_most_instances_ties_go_to_the_first_uid() -> None:
    study = StudyInfo(
        "1",
        "",
        {},
        (SeriesInfo("1.9", {}, 10), SeriesInfo("1.10", {}, 10), SeriesInfo("1.8", {}, 2)),
    )
    assert picked({"pick": "most_instances"}, study)[0] == "1.10"


def test_pick_thinnest_slices() -> None:
    study = StudyInfo(
        "1",
        "",
        {},
        (
            SeriesInfo("1.1", {"SliceThickness": "5"}, 400),
            SeriesInfo("1.2", {}, 900),
            SeriesInfo("1.3", {"SliceThickness": "0.625"}, 80),
            SeriesInfo("1.4", {"SliceThickness": "0.6250"}, 120),
            SeriesInfo("1.5", {"SliceThickness": "n/a"}, 1000),
        ),
    )
    uid, reasons = picked({"pick": "thinnest_slices"}, study)
    assert uid == "1.4"
    assert (
        reasons[-1] == "picked series 1.4 (thinnest_slices, SliceThickness '0.6250', 120 instances)"
    )


def test_pick_thinnest_slices_puts_series_without_thickness_last() -> None:
    study = StudyInfo("1", "", {}, (SeriesInfo("1.1", {}, 900), SeriesInfo("1.2", {}, 10)))
    uid, reasons = picked({"pick": "thinnest_slices"}, study)
    assert uid == "1.1"
    assert "no SliceThickness" in reasons[-1]
    thin = StudyInfo("1", "", {}, (*study.series, SeriesInfo("1.3", {"SliceThickness": 8}, 1)))
    assert picked({"pick": "thinnest_slices"}, thin)[0] == "1.3"


def test_pick_description_regex() -> None:
    uid, reasons = picked({"pick": "description_regex", "regex": "(?i)mediastin"})
    assert uid == "1.2.3.2"
    assert "series 1.2.3.1 SeriesDescription 'Lung 1.0 B70f' regex '(?i)mediastin': no" in reasons
    assert reasons[-1] == (
        "picked series 1.2.3.2 (description_regex, SeriesDescription 'Mediastinum 5.0', "
        "60 instances)"
    )


def test_pick_description_regex_then_most_instances() -> None:
    uid, _ = picked({"pick": "description_regex", "regex": "\\d\\.0"})
    assert uid == "1.2.3.1"


def test_pick_description_regex_without_candidate_means_no_match() -> None:
    uid, reasons = picked({"pick": "description_regex", "regex": "(?i)brain"})
    assert uid is None
    assert reasons[-1] == "no candidate series has a SeriesDescription matching '(?i)brain': no"


def test_pick_only_among_series_that_satisfy_the_matchers() -> None:
    rule = {
        "name": "scout",
        "pipeline": "p",
        "match": {"series": {"ImageType": {"equals": "LOCALIZER"}}},
    }
    decision = route(CHEST_CT, routing([rule]))
    assert decision.runs[0].series_instance_uid == "1.2.3.3"


def test_fallback_that_cannot_pick_discards() -> None:
    fallback = {**FALLBACK, "series": {"pick": "description_regex", "regex": "nothing"}}
    decision = route(CXR, routing([CT_LUNG], fallback))
    assert decision.discarded and not decision.used_fallback
    text = explain_text(decision)
    assert "fallback archive-all: no match" in text
    assert "DISCARDED" in text


# -- explain --------------------------------------------------------------------


def test_explain_text_shows_each_rule_and_the_deciding_values() -> None:
    decision = route(CHEST_CT, routing([CT_LUNG, CXR_RULE]))
    text = explain_text(decision)
    lines = text.splitlines()
    assert "rule ct-chest-lung: MATCHED" in lines
    assert "rule cxr: no match" in lines
    assert "    calling_ae 'CT1' one_of ['CT1', 'PACS']: yes" in lines
    assert "    study StudyDescription 'CT CHEST W/O' regex '(?i)chest|thorax': yes" in lines
    assert "    series 1.2.3.1 SliceThickness '1.0' range max 3: yes" in lines
    assert "    series 1.2.3.2 SliceThickness '5.0' range max 3: no" in lines
    assert "    series 1.2.3.3 BodyPartExamined is absent: no" in lines
    assert "    series 1.2.3.1 Modality 'CT' one_of ['CR', 'DX']: no" in lines
    assert "    picked series 1.2.3.1 (most_instances, 300 instances)" in lines
    assert lines[-1] == (
        "1 run: ct-lung on series 1.2.3.1 -> destinations pacs, notify ris "
        "(rule ct-chest-lung, priority 5)"
    )


def test_explain_text_summarises_several_runs_and_the_fallback() -> None:
    text = explain_text(route(CHEST_CT, routing([CT_LUNG, CT_ANY])))
    assert text.splitlines()[-1].startswith("2 runs: ct-lung on series 1.2.3.1 -> destinations")
    assert "; qa on series 1.2.3.1 -> destinations none (rule ct-qa)" in text
    mr = StudyInfo("9.9", "MR1", {}, (SeriesInfo("9.9.1", {"Modality": "MR"}, 20),))
    fallback_text = explain_text(route(mr, routing([CT_LUNG], FALLBACK)))
    assert "fallback archive-all: MATCHED" in fallback_text
    assert "fallback used" in fallback_text
    assert "archive on series 9.9.1 -> destinations vna" in fallback_text


# -- completion timing --------------------------------------------------------------


def with_completion(rule: dict[str, Any], **completion: float) -> dict[str, Any]:
    return {**rule, "completion": completion}


def test_completion_defaults_without_overrides() -> None:
    assert completion_for(CHEST_CT, routing([CT_LUNG]), 30.0, 3600.0) == (30.0, 3600.0)


def test_completion_takes_the_longest_override_of_matching_rules() -> None:
    config = routing(
        [
            with_completion(CT_LUNG, quiet_seconds=60, max_wait_seconds=7200),
            with_completion(CT_ANY, quiet_seconds=120),
            with_completion(CXR_RULE, quiet_seconds=999, max_wait_seconds=99999),  # no match
        ]
    )
    assert completion_for(CHEST_CT, config, 30.0, 3600.0) == (120.0, 7200.0)


def test_completion_override_may_shorten_the_defaults() -> None:
    config = routing([with_completion(CXR_RULE, quiet_seconds=5, max_wait_seconds=600)])
    assert completion_for(CXR, config, 30.0, 3600.0) == (5.0, 600.0)


def test_completion_max_wait_never_below_quiet() -> None:
    config = routing([with_completion(CXR_RULE, quiet_seconds=7200)])
    assert completion_for(CXR, config, 30.0, 3600.0) == (7200.0, 7200.0)


def test_completion_uses_the_fallback_only_when_nothing_matched() -> None:
    config = routing(
        [with_completion(CXR_RULE, quiet_seconds=10)],
        with_completion(FALLBACK, max_wait_seconds=86400),
    )
    assert completion_for(CHEST_CT, config, 30.0, 3600.0) == (30.0, 86400.0)
    assert completion_for(CXR, config, 30.0, 3600.0) == (10.0, 3600.0)


@pytest.mark.parametrize("study", [CHEST_CT, CXR])
def test_route_is_pure(study: StudyInfo) -> None:
    config = routing([CT_LUNG, CT_ANY, CXR_RULE], FALLBACK)
    assert route(study, config) == route(study, config)


def test_a_shadow_candidate_runs_on_the_same_series_delivering_nothing() -> None:
    rule = {**CT_LUNG, "shadow": {"pipeline": "ct-lung-v2"}, "out_of_range": "refuse"}
    decision = route(CHEST_CT, routing([rule, {**CT_ANY, "priority": 4}]))
    assert [(r.pipeline, r.shadow, r.priority) for r in decision.runs] == [
        ("ct-lung", False, 5),
        ("qa", False, 4),
        ("ct-lung-v2", True, 4),  # behind every production run of its priority
    ]
    production, _, shadow = decision.runs
    assert shadow.series_instance_uid == production.series_instance_uid == "1.2.3.1"
    assert (shadow.destinations, shadow.notify) == ((), ())
    assert production.destinations == ("pacs",) and production.notify == ("ris",)
    assert production.out_of_range == shadow.out_of_range == "refuse"
    assert "shadow: ct-lung-v2" in explain_text(decision)


def test_a_candidate_that_is_the_rules_own_pipeline_is_refused() -> None:
    with pytest.raises(ValueError, match=r"shadow\.pipeline"):
        routing([{**CT_LUNG, "shadow": {"pipeline": "ct-lung"}}])
    with pytest.raises(ValueError, match="out_of_range"):
        routing([{**CT_LUNG, "out_of_range": "ignore"}])
