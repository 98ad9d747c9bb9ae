"""A routing decision as text for an admin (``route explain``)."""

from __future__ import annotations

from dicomnode.routing.model import PlannedRun, RoutingDecision

_INDENT = "    "


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def describe_run(run: PlannedRun) -> str:
    """One planned run on one line, e.g. ``ct-lung on series 1.2.3 -> destinations pacs``."""
    text = (
        f"{run.pipeline} on series {run.series_instance_uid} -> destinations "
        f"{', '.join(run.destinations) or 'none'}"
    )
    if run.notify:
        text += f", notify {', '.join(run.notify)}"
    text += f" (rule {run.rule}"
    if run.priority:
        text += f", priority {run.priority}"
    return text + ")"


def explain_text(decision: RoutingDecision) -> str:
    """Why a study was routed the way it was, for an admin to read.

    One block per rule checked (``MATCHED`` or ``no match``, then each check
    indented), then a summary of the runs, of the fallback, or of the discard.

    Parameters
    ----------
    decision : RoutingDecision
        What :func:`dicomnode.routing.route` returned.

    Returns
    -------
    str
        Lines separated by ``\\n``, without a trailing newline. The lines quote
        header values the rules tested; rules on patient attributes put them
        here, so keep this text out of INFO logs.
    """
    lines: list[str] = []
    if not decision.explanations:
        lines.append("no routing rules are configured")
    for explanation in decision.explanations:
        kind = "fallback" if explanation.is_fallback else "rule"
        verdict = "MATCHED" if explanation.matched else "no match"
        lines.append(f"{kind} {explanation.rule}: {verdict}")
        lines.extend(_INDENT + reason for reason in explanation.reasons)
    fallback_checked = any(e.is_fallback for e in decision.explanations)
    if decision.used_fallback:
        lines.append("no rule matched: fallback used")
    if decision.runs:
        runs = "; ".join(describe_run(run) for run in decision.runs)
        lines.append(f"{_plural(len(decision.runs), 'run')}: {runs}")
    elif fallback_checked:
        lines.append(
            "no rule matched and the fallback found no input series: the study will be DISCARDED"
        )
    else:
        lines.append("no rule matched: the study will be DISCARDED")
    return "\n".join(lines)
