"""Under ``make fuzz``: print what each target tried, at the end of the session
(``make fuzz`` runs this under coverage and prints which lines ran)."""

from __future__ import annotations

from typing import Any

from tests.fuzz import BUDGET, SEEN


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if BUDGET <= 0:
        return
    write = terminalreporter.write_line
    terminalreporter.section("what the fuzzing tried")
    for target, counts in sorted(SEEN.items()):
        write(f"{target}:")
        for what, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            write(f"  {count:8d}  {what}")
