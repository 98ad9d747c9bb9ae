"""Routing a study: which rules match, which series each one runs on.

Pure functions of the study's metadata and the routing configuration: no I/O,
no clock, no job store. The caller records the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomnode.config.rules import RoutingConfig, Rule
from dicomnode.routing.matchers import evaluate, evaluate_attribute
from dicomnode.routing.model import (
    PlannedRun,
    RoutingDecision,
    RuleExplanation,
    SeriesInfo,
    StudyInfo,
)
from dicomnode.routing.selection import pick_series


@dataclass(frozen=True)
class _Outcome:
    rule: Rule
    explanation: RuleExplanation
    run: PlannedRun | None
    shadow: PlannedRun | None = None


def _evaluate(rule: Rule, study: StudyInfo, *, is_fallback: bool = False) -> _Outcome:
    match = rule.match  # always empty for the fallback (checked at validation)
    reasons: list[str] = []
    header_ok = True
    if match.calling_ae is not None:
        outcome = evaluate(match.calling_ae, study.calling_ae, "calling_ae")
        reasons.append(outcome.reason)
        header_ok = header_ok and outcome.matched
    for keyword, matcher in match.study.items():
        outcome = evaluate_attribute(matcher, study.attributes, keyword, "study")
        reasons.append(outcome.reason)
        header_ok = header_ok and outcome.matched
    candidates: list[SeriesInfo] = []
    for series in study.series:
        series_ok = True
        for keyword, matcher in match.series.items():
            outcome = evaluate_attribute(
                matcher, series.attributes, keyword, f"series {series.series_instance_uid}"
            )
            reasons.append(outcome.reason)
            series_ok = series_ok and outcome.matched
        if series_ok:
            candidates.append(series)
    run: PlannedRun | None = None
    if not study.series:
        reasons.append("the study has no series: no")
    elif not candidates:
        reasons.append("no series satisfies all series matchers: no")
    elif header_ok:
        pick = pick_series(rule.series, candidates)
        reasons.extend(pick.reasons)
        if pick.series is not None:
            run = PlannedRun(
                rule=rule.name,
                pipeline=rule.pipeline,
                series_instance_uid=pick.series.series_instance_uid,
                destinations=rule.destinations,
                notify=rule.notify,
                priority=rule.priority,
                result_status=rule.result_status,
                notify_after=rule.notify_after,
                out_of_range=rule.out_of_range,
            )
    shadow: PlannedRun | None = None
    if run is not None and rule.shadow is not None:
        # the candidate: same series, nothing delivered, queued behind every
        # production run of the rule's priority so that it never delays one
        shadow = PlannedRun(
            rule=rule.name,
            pipeline=rule.shadow.pipeline,
            series_instance_uid=run.series_instance_uid,
            priority=rule.priority - 1,
            result_status=rule.result_status,
            shadow=True,
            out_of_range=rule.out_of_range,
        )
        reasons.append(f"shadow: {rule.shadow.pipeline} runs beside it, delivering nothing")
    explanation = RuleExplanation(
        rule=rule.name, matched=run is not None, reasons=tuple(reasons), is_fallback=is_fallback
    )
    return _Outcome(rule, explanation, run, shadow)


def _outcomes(study: StudyInfo, routing: RoutingConfig) -> list[_Outcome]:
    outcomes = [_evaluate(rule, study) for rule in routing.rules]
    if routing.fallback is not None and not any(o.run is not None for o in outcomes):
        outcomes.append(_evaluate(routing.fallback, study, is_fallback=True))
    return outcomes


def route(study: StudyInfo, routing: RoutingConfig) -> RoutingDecision:
    """Decide which pipeline runs a complete study gets.

    Every rule is checked, in order. A rule matches when its ``calling_ae``
    and all its study matchers match and at least one series satisfies all
    its series matchers; it then gives one run on the series its
    ``series.pick`` strategy picks among those. The fallback is checked only
    when no rule matched.

    Parameters
    ----------
    study : StudyInfo
        The study's metadata (see :func:`dicomnode.routing.describe_study`).
    routing : RoutingConfig
        The validated rules.

    A rule with a ``shadow`` candidate gives a second run: the candidate on
    the same series, with no destinations, nothing to notify, and a priority
    one below the rule's (it never delays a production run).

    Returns
    -------
    RoutingDecision
        The runs, highest priority first (configuration order among equals,
        production runs before shadow runs),
        and one explanation per rule checked. No runs means the study is to
        be discarded.
    """
    outcomes = _outcomes(study, routing)
    runs = [run for o in outcomes for run in (o.run, o.shadow) if run is not None]
    # stable: configuration order among equals, shadow runs after production ones
    runs.sort(key=lambda run: (-run.priority, run.shadow))
    return RoutingDecision(
        study_instance_uid=study.study_instance_uid,
        runs=tuple(runs),
        explanations=tuple(o.explanation for o in outcomes),
        used_fallback=any(o.run is not None and o.explanation.is_fallback for o in outcomes),
    )


def completion_for(
    study: StudyInfo, routing: RoutingConfig, default_quiet: float, default_max_wait: float
) -> tuple[float, float]:
    """The assembly timing for a study, from the rules it matches.

    Among the rules that match (the fallback when none does) and set a
    ``completion`` override, the longest ``quiet_seconds`` and the longest
    ``max_wait_seconds`` win; a value no matching rule sets keeps its default.
    The maximum wait is never shorter than the quiet period.

    Parameters
    ----------
    study : StudyInfo
        What has arrived of the study so far.
    routing : RoutingConfig
        The validated rules.
    default_quiet, default_max_wait : float
        The ``assembly`` section's ``quiet_seconds`` and ``max_wait_seconds``.

    Returns
    -------
    (float, float)
        ``(quiet_seconds, max_wait_seconds)``.
    """
    outcomes = [_evaluate(rule, study) for rule in routing.rules]
    applying: list[Rule] = [o.rule for o in outcomes if o.run is not None]
    if not applying and routing.fallback is not None:
        applying = [routing.fallback]
    overrides = [rule.completion for rule in applying if rule.completion is not None]
    quiets = [o.quiet_seconds for o in overrides if o.quiet_seconds is not None]
    waits = [o.max_wait_seconds for o in overrides if o.max_wait_seconds is not None]
    quiet = max(quiets) if quiets else default_quiet
    max_wait = max(waits) if waits else default_max_wait
    return quiet, max(max_wait, quiet)
