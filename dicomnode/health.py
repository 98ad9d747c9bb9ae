"""Liveness and readiness of a running node, as values a web app or the
node's own small HTTP listener (:mod:`dicomnode.endpoints`) turns into answers.

* **Liveness** (``/healthz``): the process answers. Nothing else is checked:
  a supervisor that restarts on a failed liveness probe must not restart a
  node that is only waiting for disk space.
* **Readiness** (``/readyz``): the node can take and process studies now: the
  job store answers a query, the spool's disk has more free space than
  ``storage.min_free_mb`` (below it every C-STORE is refused with 0xA700),
  and every part's threads and processes run (listener, assembly, routing,
  runner and its workers, export, retention, drift checks when on).

A report names each check and what failed; it holds no patient data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dicomnode.errors import JobStoreError

__all__ = ["Check", "Health", "SpaceProbe", "StoreProbe", "liveness", "readiness"]

#: HTTP statuses of a report.
OK = 200
UNAVAILABLE = 503


@dataclass(frozen=True)
class Check:
    """One check: its name, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Health:
    """A set of checks; it passes when every check does."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> tuple[str, ...]:
        """The names of the checks that failed."""
        return tuple(check.name for check in self.checks if not check.ok)

    @property
    def http_status(self) -> int:
        """200 when it passes, else 503."""
        return OK if self.ok else UNAVAILABLE

    def as_dict(self) -> dict[str, object]:
        """``{"status": "ok" | "unavailable", "failed": [...], "checks": {name:
        {"ok": bool, "detail": str}}}``."""
        return {
            "status": "ok" if self.ok else "unavailable",
            "failed": list(self.failed),
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks},
        }

    def body(self) -> bytes:
        """:meth:`as_dict` as a JSON body."""
        return json.dumps(self.as_dict(), sort_keys=True).encode("utf-8")


class StoreProbe(Protocol):
    """The job store verb readiness uses to see that the store answers."""

    def state_counts(self) -> dict[tuple[str, str], int]: ...


class SpaceProbe(Protocol):
    """The spool's free space and its floor."""

    root: Path
    min_free_bytes: int

    def free_bytes(self) -> int: ...


def liveness() -> Health:
    """The process is up (it answered).

    Returns
    -------
    Health
        One passing check, ``process``, naming the pid.
    """
    return Health((Check("process", True, f"pid {os.getpid()}"),))


def _store_check(store: StoreProbe | None) -> Check:
    if store is None:
        return Check("job_store", False, "not open")
    try:
        counts = store.state_counts()
    except JobStoreError as exc:
        return Check("job_store", False, f"does not answer: {exc}")
    return Check("job_store", True, f"answers ({sum(counts.values())} jobs)")


def _disk_check(spool: SpaceProbe | None) -> Check:
    if spool is None:
        return Check("disk", False, "no spool")
    mib = 1024 * 1024
    try:
        free = spool.free_bytes()
    except OSError as exc:
        return Check("disk", False, f"cannot read the free space of {spool.root}: {exc.strerror}")
    floor = spool.min_free_bytes
    detail = f"{free // mib} MiB free on the spool's disk, floor {floor // mib} MiB"
    if floor > 0 and free < floor:
        return Check("disk", False, detail + ": C-STOREs are refused (0xA700)")
    return Check("disk", True, detail)


def readiness(
    store: StoreProbe | None,
    spool: SpaceProbe | None,
    parts: Mapping[str, Callable[[], bool]],
) -> Health:
    """Whether the node can take and process studies now.

    Parameters
    ----------
    store : StoreProbe or None
        The job store (``None``: not open, a failed check).
    spool : SpaceProbe or None
        The spool, with its free-space floor (``storage.min_free_mb``).
    parts : mapping of str to callable
        Per part (``ingress``, ``runner``...), whether its threads and
        processes run.

    Returns
    -------
    Health
        Checks ``job_store``, ``disk`` and one per part.
    """
    checks = [_store_check(store), _disk_check(spool)]
    for name, alive in parts.items():
        running = alive()
        checks.append(Check(name, running, "running" if running else "not running"))
    return Health(tuple(checks))
