"""What routing reads (study metadata) and what it decides (planned runs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dicomnode.jobs.models import RunSpec


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study, as routing sees it.

    Attributes
    ----------
    series_instance_uid : str
    attributes : mapping of str to object
        DICOM keyword to value, from the header of the series' first instance
        (str, int, float, tuple of those for multi-valued attributes).
    instance_count : int
        How many instances of the series were received.
    """

    series_instance_uid: str
    attributes: Mapping[str, object]
    instance_count: int

    def __post_init__(self) -> None:
        if self.instance_count < 0:
            raise ValueError(f"SeriesInfo.instance_count must be >= 0, got {self.instance_count}")


@dataclass(frozen=True)
class StudyInfo:
    """A study, as routing sees it.

    Attributes
    ----------
    study_instance_uid : str
    calling_ae : str
        The AE title the study was sent from; empty when unknown.
    attributes : mapping of str to object
        Study-level attributes (keyword to value), from one instance's header.
    series : tuple of SeriesInfo
    """

    study_instance_uid: str
    calling_ae: str
    attributes: Mapping[str, object]
    series: tuple[SeriesInfo, ...]


#: One pipeline run a routing decision asks for: the job store's own record of
#: it, so the routing stage stores decisions as they are.
PlannedRun = RunSpec


@dataclass(frozen=True)
class RuleExplanation:
    """Why a rule matched a study or did not.

    Attributes
    ----------
    rule : str
        The rule's name.
    matched : bool
        Whether the rule gives a run for the study.
    reasons : tuple of str
        One line per check, e.g. ``series 1.2.3 Modality 'CT' equals 'CT': yes``.
    is_fallback : bool
        Whether this is the fallback rule.
    """

    rule: str
    matched: bool
    reasons: tuple[str, ...] = ()
    is_fallback: bool = False


@dataclass(frozen=True)
class RoutingDecision:
    """What :func:`dicomnode.routing.route` decided for one study.

    Attributes
    ----------
    study_instance_uid : str
    runs : tuple of PlannedRun
        Highest priority first, rules of equal priority in configuration order.
        Empty when nothing matched: the study is to be discarded.
    explanations : tuple of RuleExplanation
        One per rule checked, in configuration order, the fallback last.
    used_fallback : bool
        Whether the runs come from the fallback.
    """

    study_instance_uid: str
    runs: tuple[PlannedRun, ...] = ()
    explanations: tuple[RuleExplanation, ...] = ()
    used_fallback: bool = False

    @property
    def discarded(self) -> bool:
        """Whether the study gets no run at all."""
        return not self.runs
