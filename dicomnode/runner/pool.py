"""Worker processes with a deadline per task.

Each slot holds one long-lived worker process (so pipelines stay loaded
between jobs). A worker that exits, crashes or is killed by the kernel for
memory is reported as a failed task and replaced; a task past its deadline
has its worker killed and replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from dicomnode.errors import RunnerError
from dicomnode.runner.prefetch import Prefetch
from dicomnode.runner.worker import WARM, Outcome, Task, WorkerSettings, worker_main

LOGGER = logging.getLogger(__name__)

STARTUP_TIMEOUT = 120.0


@dataclass
class _Slot:
    index: int
    process: BaseProcess
    conn: Connection
    device: str
    task: Task | None = None
    deadline: float = 0.0
    warm: bool = False
    """The worker loaded its pipelines and warmed up its writer."""
    ahead: frozenset[str] = frozenset()
    """The files it was last asked to read ahead."""


class WorkerPool:
    """A fixed number of worker processes, one task each at a time.

    Parameters
    ----------
    size : int
        Number of workers (concurrent jobs on the device).
    settings : WorkerSettings
        Device, threads, plugins, models directory.
    log_level : str
        Logging level inside the workers.
    """

    def __init__(self, size: int, settings: WorkerSettings, log_level: str = "INFO") -> None:
        self.size = size
        self.settings = settings
        self.log_level = log_level
        self._ctx = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []

    def _spawn(self, index: int) -> _Slot:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(child, self.settings, self.log_level),
            name=f"runner-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        if not parent.poll(STARTUP_TIMEOUT):
            process.kill()
            raise RunnerError(f"worker runner-{index} did not start in {STARTUP_TIMEOUT:g} s")
        try:
            status, detail = parent.recv()
        except EOFError as exc:
            raise RunnerError(
                f"worker runner-{index} exited while starting ({process.exitcode})"
            ) from exc
        if status != "ready":
            process.join(timeout=5)
            raise RunnerError(f"worker runner-{index} cannot start: {detail}")
        return _Slot(index=index, process=process, conn=parent, device=str(detail))

    def start(self) -> None:
        """Start every worker.

        Raises
        ------
        RunnerError
            A worker could not start (bad device, broken plugin...).
        """
        self._slots = [self._spawn(i) for i in range(self.size)]

    @property
    def device(self) -> str:
        """The device the workers run on."""
        return self._slots[0].device if self._slots else self.settings.device

    def alive(self) -> bool:
        """Whether every worker process runs (``False`` before start). A worker
        that died is replaced at the runner's next poll."""
        return bool(self._slots) and all(slot.process.is_alive() for slot in self._slots)

    def warm(self) -> int:
        """How many workers have loaded their pipelines and warmed up their
        result writer (a task given to one that has not waits for that)."""
        return sum(1 for slot in self._slots if slot.warm)

    def idle(self) -> int:
        """How many workers are free."""
        return sum(1 for slot in self._slots if slot.task is None)

    def busy(self) -> list[Task]:
        """The tasks in flight."""
        return [slot.task for slot in self._slots if slot.task is not None]

    def waitables(self) -> list[Any]:
        """What becomes ready when a busy worker answers or dies, or a
        starting one reports it is warm: its pipe and its process sentinel (for
        :func:`multiprocessing.connection.wait`)."""
        ready: list[Any] = []
        for slot in self._slots:
            if slot.task is not None or not slot.warm:
                ready.extend((slot.conn, slot.process.sentinel))
        return ready

    @staticmethod
    def _receive(slot: _Slot) -> Outcome | None:
        """The worker's outcome when it sent one; notes its warm message on
        the way.

        Raises
        ------
        EOFError, OSError
            The pipe is closed (the worker died).
        """
        while slot.conn.poll():
            received = slot.conn.recv()
            if isinstance(received, Outcome):
                return received
            if received == WARM:
                slot.warm = True
        return None

    def submit(self, task: Task, timeout: float) -> None:
        """Give ``task`` to a free worker (one that read its files ahead, when
        one did); it must finish within ``timeout`` s."""
        free = [slot for slot in self._slots if slot.task is None]
        if not free:
            raise RunnerError("no free worker")
        files = set(task.files)
        slot = next((s for s in free if files <= s.ahead), free[0])
        slot.conn.send(task)
        slot.task = task
        slot.ahead = frozenset()
        slot.deadline = time.monotonic() + timeout

    def prefetch(self, request: Prefetch) -> bool:
        """Ask a free, warm worker to read a study's files ahead of its runs
        (:mod:`~dicomnode.runner.prefetch`); ``False`` when none is free. A
        task given to it meanwhile waits until it has read them."""
        idle = [slot for slot in self._slots if slot.task is None and slot.warm]
        for slot in sorted(idle, key=lambda s: bool(s.ahead)):  # keep what others read ahead
            try:
                slot.conn.send(request)
            except (BrokenPipeError, OSError):
                continue  # it died: replaced at the next poll
            slot.ahead = frozenset(request.files)
            return True
        return False

    def _replace(self, slot: _Slot) -> None:
        try:
            slot.conn.close()
        finally:
            fresh = self._spawn(slot.index)
            self._slots[self._slots.index(slot)] = fresh

    def poll(self) -> list[Outcome]:
        """Collect finished tasks, fail those whose worker died or hung, and
        replace workers that died while idle."""
        finished: list[Outcome] = []
        for slot in list(self._slots):
            task = slot.task
            if task is None:
                if slot.process.is_alive() and not slot.warm:
                    try:
                        self._receive(slot)
                    except (EOFError, OSError):
                        pass  # it died: replaced at the next poll
                if not slot.process.is_alive():
                    # died while idle (the kernel's OOM killer, a signal): a task
                    # sent to it would meet a broken pipe
                    slot.process.join(timeout=1)
                    LOGGER.error(
                        "runner-%d: the idle worker exited (%s); starting a new worker",
                        slot.index,
                        slot.process.exitcode,
                    )
                    self._replace(slot)
                continue
            outcome: Outcome | None = None
            replace = False
            try:
                outcome = self._receive(slot)
            except (EOFError, OSError):
                outcome = None
            if outcome is None and not slot.process.is_alive():
                slot.process.join(timeout=1)
                code = slot.process.exitcode
                why = (
                    f"killed by signal {-code}" if code is not None and code < 0 else f"code {code}"
                )
                outcome = Outcome(
                    task.job_id,
                    ok=False,
                    summary=f"the worker process exited ({why}) while running {task.pipeline}: "
                    "crash or out of memory",
                )
                replace = True
            elif outcome is None and time.monotonic() > slot.deadline:
                slot.process.kill()
                slot.process.join(timeout=10)
                outcome = Outcome(
                    task.job_id,
                    ok=False,
                    summary=f"{task.pipeline} timed out; its worker was killed",
                )
                replace = True
            if outcome is None:
                continue
            slot.task = None
            finished.append(outcome)
            if replace:
                LOGGER.error("runner-%d: %s; starting a new worker", slot.index, outcome.summary)
                self._replace(slot)
        return finished

    def stop(self) -> list[Task]:
        """Stop every worker; return the tasks that were still running."""
        unfinished = self.busy()
        for slot in self._slots:
            if slot.task is None:
                try:
                    slot.conn.send(None)
                except (BrokenPipeError, OSError):
                    slot.process.kill()
            else:
                slot.process.kill()
        for slot in self._slots:
            slot.process.join(timeout=10)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()
        self._slots = []
        return unfinished
