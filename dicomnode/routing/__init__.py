"""Routing: the rule engine that turns a complete study into pipeline runs."""

from dicomnode.routing.describe import describe_study
from dicomnode.routing.engine import completion_for, route
from dicomnode.routing.explain import explain_text
from dicomnode.routing.model import (
    PlannedRun,
    RoutingDecision,
    RuleExplanation,
    SeriesInfo,
    StudyInfo,
)

__all__ = [
    "PlannedRun",
    "RoutingDecision",
    "RuleExplanation",
    "SeriesInfo",
    "StudyInfo",
    "completion_for",
    "describe_study",
    "explain_text",
    "route",
]
