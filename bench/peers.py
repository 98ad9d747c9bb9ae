"""What the benchmarks share: ports, peer processes, C-ECHO, tables, clean exits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

CALLING_AET = "BENCH"
ORTHANC = "/usr/sbin/Orthanc"
STOP_TIMEOUT = 40.0
# DCMTK and Orthanc read TCP_NODELAY; the node sets it on every socket itself.
CHILD_ENV = {**os.environ, "TCP_NODELAY": "1"}


class BenchError(Exception):
    """A peer failed to start, or a run failed its checks."""


# -- processes and ports ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, indented, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text) or "    (empty log)"


def start(argv: Sequence[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a peer in its own process group, its output going to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=CHILD_ENV,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], *, group: bool = False) -> int | None:
    """SIGTERM the process (or its whole group), wait, then SIGKILL whatever is left of the
    group, even when interrupted. Returns the exit status, or None when it had to be killed."""
    status: int | None = proc.poll()
    try:
        if status is None:
            try:
                if group:
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                status = proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                status = None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stray children (storescp forks, node workers)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    return status


def echo(aet: str, port: int) -> bool:
    """Whether a C-ECHO to the receiver succeeds."""
    result = subprocess.run(
        ["echoscu", "-to", "5", "-aet", CALLING_AET, "-aec", aet, "127.0.0.1", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=CHILD_ENV,
        check=False,
    )
    return result.returncode == 0


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Exit through the finally blocks; a second SIGTERM must not interrupt the cleanup."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(128 + signum)
