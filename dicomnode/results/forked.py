"""One step of the result writer in a forked child, beside the writer's other steps.

Building and encoding DICOM objects is pure Python: in one process the steps
take turns on the GIL, so a thread beside them gains nothing. A forked child
does one of them on another core: it starts with the writer's memory as it is
at the fork (copy-on-write: the result and the headers are not copied), writes
its object to a file, answers through a pipe whether it succeeded, and exits
with :func:`os._exit`, so nothing of the parent (exit handlers, buffers) runs
twice. The child touches nothing the parent owns besides the file it is given
(no job store, no GPU) and is killed when its parent ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import NoReturn

from dicomnode.processes import end_with_parent

__all__ = ["ChildError", "Forked", "can_fork"]


class ChildError(Exception):
    """The child's step failed: ``kind`` names its exception type (``exit``
    when it ended without an answer), the message its text."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def can_fork() -> bool:
    """Whether this system forks (POSIX)."""
    return hasattr(os, "fork")


class Forked:
    """A child process running one step; :meth:`wait` for its end."""

    def __init__(self, pid: int, fd: int) -> None:
        self._pid: int | None = pid
        self._fd: int | None = fd

    @classmethod
    def start(cls, work: Callable[[], None]) -> Forked:
        """Fork a child that runs ``work`` and exits.

        Raises
        ------
        OSError
            No child could be forked (run ``work`` here instead).
        """
        read, write = os.pipe()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            raise
        if pid == 0:
            os.close(read)
            _child(work, write, parent)
        os.close(write)
        return cls(pid, read)

    def wait(self) -> None:
        """Wait until the child ends.

        Raises
        ------
        ChildError
            Its step raised, or it ended without an answer (killed, crashed).
        """
        assert self._fd is not None and self._pid is not None, "waited for twice"
        chunks: list[bytes] = []
        try:
            while chunk := os.read(self._fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(self._fd)
            self._fd = None
            _, status = os.waitpid(self._pid, 0)
            self._pid = None
        try:
            answer = json.loads(b"".join(chunks))
        except ValueError:
            raise ChildError(
                "exit", f"the child process ended without an answer (wait status {status})"
            ) from None
        if "error" in answer:
            raise ChildError(str(answer["kind"]), str(answer["error"]))

    def abandon(self) -> None:
        """Kill the child if it still runs and reap it (the parent's own step
        failed); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._pid is not None:
            pid, self._pid = self._pid, None
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)


def _child(work: Callable[[], None], fd: int, parent: int) -> NoReturn:
    """In the child: run ``work``, answer as JSON, exit."""
    try:
        end_with_parent()
        if os.getppid() != parent:
            os._exit(1)
        work()
        answer: dict[str, object] = {"ok": True}
    except BaseException as exc:  # noqa: BLE001 - the parent raises it; the child must exit
        answer = {"kind": type(exc).__name__, "error": str(exc)}
    try:
        data = json.dumps(answer).encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os._exit(0)
