"""A step of the result writer in a forked child: its success, its exception,
its death and its abandonment, each seen by the parent."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dicomnode.results.forked import ChildError, Forked


def test_the_child_works_on_the_parents_memory_and_its_file_is_there_after_wait(
    tmp_path: Path,
) -> None:
    payload = {"rows": list(range(1000))}  # the child sees it without a copy being sent
    target = tmp_path / "out.txt"
    child = Forked.start(lambda: target.write_text(str(sum(payload["rows"]))))
    child.wait()
    assert target.read_text() == str(sum(range(1000)))


def test_an_exception_in_the_child_is_raised_in_the_parent_with_its_kind() -> None:
    def fail() -> None:
        raise ValueError("highdicom refused it")

    child = Forked.start(fail)
    with pytest.raises(ChildError, match="highdicom refused it") as caught:
        child.wait()
    assert caught.value.kind == "ValueError"


def test_a_child_that_dies_without_an_answer_is_an_error() -> None:
    child = Forked.start(lambda: os._exit(3))
    with pytest.raises(ChildError, match="without an answer") as caught:
        child.wait()
    assert caught.value.kind == "exit"


def test_an_abandoned_child_is_killed_and_reaped(tmp_path: Path) -> None:
    started = tmp_path / "started"

    def hang() -> None:
        started.touch()
        time.sleep(600)

    child = Forked.start(hang)
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.01)
    pid = child._pid
    assert pid is not None
    child.abandon()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no such child any more
