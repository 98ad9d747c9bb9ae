"""Fuzzing of the intake and the configuration loader.

Each target is a Hypothesis property. In ``make test`` (the ``ci`` profile)
it runs a few dozen to a few hundred examples, derandomized, so a run is
repeatable; ``make fuzz`` (the ``fuzz`` profile) draws fresh random examples
again and again until the time budget of each target is spent, then prints
what was tried and which lines of the targets ran (:mod:`tests.fuzz.conftest`).
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable

#: Seconds ``make fuzz`` spends on each target; 0 in ``make test`` (one round).
BUDGET = float(os.environ.get("DICOMNODE_FUZZ_SECONDS", "0"))
#: What each target saw, by kind of outcome: printed by ``make fuzz``.
SEEN: defaultdict[str, Counter[str]] = defaultdict(Counter)


def note(target: str, what: str) -> None:
    """Count one outcome of ``target`` (e.g. ``refused: an unknown VR``)."""
    SEEN[target][what] += 1


def rounds(target: str, run: Callable[[], None]) -> None:
    """Run a Hypothesis test once, or, under ``make fuzz``, round after round
    (each with fresh random examples) until the budget is spent."""
    deadline = time.monotonic() + BUDGET
    count = 0
    while True:
        run()
        count += 1
        if time.monotonic() >= deadline:
            break
    note(target, f"rounds of Hypothesis: {count}")
