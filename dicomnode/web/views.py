"""What the console shows that is its own: the dashboard's figures, and the
``routing:`` section cut from and put back into the configuration file's text.
Everything else it reads and does through :class:`~dicomnode.admin.Admin`."""

from __future__ import annotations

import re
import statistics
import time

from dicomnode.admin import Admin
from dicomnode.jobs import JobState, Run
from dicomnode.web.models import Dashboard

__all__ = [
    "PREVIEW_STATES",
    "dashboard",
    "redacted",
    "routing_section",
    "with_routing_section",
]

#: The run states that have written results a preview can show.
PREVIEW_STATES = frozenset({"RESULTS_WRITTEN", "EXPORTING", "DONE", "DEAD"})

#: A top-level key of the YAML file (column 0), e.g. ``routing:``.
_TOP_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*:")


def _latency(admin: Admin, since: float) -> dict[str, dict[str, float]]:
    """Per pipeline, seconds from routed to done of the runs done since ``since``."""
    seconds: dict[str, list[float]] = {}
    for job in admin.store.jobs(state=JobState.DONE):
        if not isinstance(job, Run) or job.updated_at < since:
            continue
        history = admin.store.history(job.id)
        if history:
            seconds.setdefault(job.pipeline, []).append(history[-1].at - history[0].at)
    return {
        name: {
            "runs": float(len(values)),
            "median_s": statistics.median(values),
            "max_s": max(values),
        }
        for name, values in sorted(seconds.items())
    }


def dashboard(
    admin: Admin, free_bytes: int | None, floor_bytes: int, now: float | None = None
) -> Dashboard:
    """The dashboard's figures."""
    now = time.time() if now is None else now
    studies = admin.store.studies()
    by_state: dict[str, dict[str, int]] = {}
    for (kind, state), count in sorted(admin.store.state_counts().items()):
        by_state.setdefault(kind, {})[state] = count
    failing = [
        row
        for row in admin.deliveries(limit=10_000)
        if row.state != "DELIVERED" and (row.attempts > 0 or row.state == "DEAD")
    ]
    return Dashboard(
        instances_received=sum(s.instance_count for s in studies),
        studies_received=len(studies),
        jobs_by_state=by_state,
        deliveries_failing=len(failing),
        dead_runs=by_state.get("run", {}).get(str(JobState.DEAD), 0),
        disk_free_bytes=free_bytes,
        disk_floor_bytes=floor_bytes,
        latency_24h=_latency(admin, now - 86400),
    )


def _section_bounds(lines: list[str]) -> tuple[int, int] | None:
    start = next((i for i, line in enumerate(lines) if line.startswith("routing:")), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if _TOP_KEY.match(lines[i])), len(lines))
    # comments just above the next section belong to it
    while end > start + 1 and lines[end - 1].startswith("#"):
        end -= 1
    return start, end


def routing_section(text: str) -> str:
    """The ``routing:`` section of a configuration file's text, comments kept
    (``routing:`` alone when the file has none)."""
    lines = text.splitlines(keepends=True)
    bounds = _section_bounds(lines)
    if bounds is None:
        return "routing:\n  rules: []\n"
    start, end = bounds
    return "".join(lines[start:end])


def with_routing_section(text: str, section: str) -> str:
    """The file's text with its ``routing:`` section replaced by ``section``
    (added at the end when it has none); the rest of the file, comments
    included, is left as it was."""
    section = section.replace("\r\n", "\n")
    if not section.endswith("\n"):
        section += "\n"
    lines = text.splitlines(keepends=True)
    bounds = _section_bounds(lines)
    if bounds is None:
        return text + ("" if text.endswith("\n") or not text else "\n") + section
    start, end = bounds
    return "".join(lines[:start]) + section + "".join(lines[end:])


_URL_SECRET = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@]*@)?(?P<rest>[^?#]*)(?P<query>[?#].*)?$"
)


def redacted(value: object) -> object:
    """A configuration dump with what may be a secret hidden: the user and
    password of a URL (a broker's, a database's) and its query (a webhook's
    token); nothing else is changed."""
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redacted(item) for item in value]
    if isinstance(value, str):
        found = _URL_SECRET.match(value)
        if found and (found["userinfo"] or found["query"]):
            userinfo = "***@" if found["userinfo"] else ""
            query = "?***" if found["query"] else ""
            return f"{found['scheme']}{userinfo}{found['rest']}{query}"
    return value
