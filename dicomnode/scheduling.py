"""Periodic passes: how the stages that poll the job store are driven, and how
a stage is woken when the work it waits for was committed."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing import connection
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler


def every(seconds: float, run: Callable[[], object], job_id: str) -> BackgroundScheduler:
    """Start a scheduler that calls ``run`` now and then every ``seconds``.

    A pass never overlaps the previous one, and passes missed while one ran
    long are run once, not made up one by one. Stop it with
    ``shutdown(wait=True)``, which waits for a pass in progress.

    Parameters
    ----------
    seconds : float
        The interval between the starts of two passes.
    run : callable
        One pass.
    job_id : str
        The job's name in the scheduler's logs.
    """
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        run,
        "interval",
        seconds=seconds,
        id=job_id,
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    scheduler.start()
    return scheduler


class Wakeup:
    """A signal that a stage has work, so it need not wait for its next poll.

    ``set()`` may be called from any thread (the job store calls it after a
    commit); the stage's loop calls ``wait(timeout)``, which returns at once
    when it was set since the last wait, else when it is set or the timeout
    passes. A signal given while the stage is busy is kept, not lost: the
    next wait returns at once. Polling stays the fallback: a change the
    signal does not see (another process's commit, a retry's backoff
    running out) is found at the next poll.

    It is a pipe, not only an event, so that a loop can wait on it together
    with other file descriptors (the runner waits for its workers' answers
    too): see :meth:`fileno` and :func:`multiprocessing.connection.wait`.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._closed = False
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The descriptor that becomes readable when the wake-up is set."""
        return self._read

    def set(self) -> None:
        """Wake the stage (thread-safe; never blocks)."""
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write, b"!")
            except BlockingIOError:
                pass  # the pipe is full of earlier signals: the stage wakes anyway

    def clear(self) -> bool:
        """Consume the pending signals; return whether there were any."""
        woken = False
        while True:
            try:
                data = os.read(self._read, 4096)
            except (BlockingIOError, OSError):
                return woken
            if not data:
                return woken
            woken = True

    def wait(self, timeout: float) -> bool:
        """Wait until set or ``timeout`` seconds passed; return whether it was set."""
        if self._closed:
            return False
        readable, _, _ = select.select([self._read], [], [], max(0.0, timeout))
        return bool(readable) and self.clear()

    def close(self) -> None:
        """Release the pipe; later ``set()`` calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._write)
            os.close(self._read)

    def __del__(self) -> None:
        self.close()


class Loop:
    """A stage's background thread: one pass, then wait for a wake-up or the
    poll interval, until stopped.

    Unlike :func:`every` a pass starts as soon as the stage is woken, so a
    hand-off between stages costs no poll interval. Passes never overlap.

    Parameters
    ----------
    name : str
        The thread's name.
    run : callable
        One pass; it returns an optional number of seconds to wait at most
        before the next pass (less than the poll interval when the stage
        knows work falls due sooner), or ``None``.
    poll_seconds : float or callable
        The longest wait between two passes, or a function returning it (read
        before every wait, so a reloaded configuration applies).
    on_error : callable
        Called with an exception a pass raised; the loop goes on unless it
        raises in turn (then the thread ends, and :meth:`alive` says so).
    waitables : callable, optional
        Returns more objects to wait on beside the wake-up (anything
        :func:`multiprocessing.connection.wait` takes: the pipes and
        sentinels of worker processes): one becoming ready starts a pass.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[], float | None],
        poll_seconds: float | Callable[[], float],
        on_error: Callable[[Exception], None],
        waitables: Callable[[], list[Any]] | None = None,
    ) -> None:
        self.name = name
        self.run = run
        self.poll_seconds = poll_seconds
        self.on_error = on_error
        self.waitables = waitables
        self.wakeup = Wakeup()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; the first pass runs at once."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while not self._stop.is_set():
            limit: float | None = None
            try:
                limit = self.run()
            except Exception as exc:  # noqa: BLE001 - the thread boundary; the stage logs it
                self.on_error(exc)
            poll = self.poll_seconds() if callable(self.poll_seconds) else self.poll_seconds
            timeout = poll if limit is None else min(limit, poll)
            if self._stop.is_set():
                break
            others = self.waitables() if self.waitables is not None else []
            if others:
                if self.wakeup.fileno() in connection.wait(
                    [self.wakeup.fileno(), *others], timeout
                ):
                    self.wakeup.clear()
            else:
                self.wakeup.wait(timeout)

    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop after the pass in progress."""
        self._stop.set()
        self.wakeup.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
