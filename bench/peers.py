"""What the benchmarks share: ports, peer processes, C-ECHO, a throwaway PostgreSQL server,
tables, clean exits."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

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


def start(
    argv: Sequence[str], log: Path, cwd: Path, user: str | None = None
) -> subprocess.Popen[bytes]:
    """Start a peer in its own process group, its output going to ``log``; as ``user``
    (and that user's group) when given, which needs root."""
    with log.open("wb") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=CHILD_ENV,
            start_new_session=True,
            user=user,
            group=user,
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


def workers_warm(metrics_port: int) -> bool:
    """Whether a node's ``/metrics`` (on ``metrics_port``) counts its runner's
    workers and none of them ``warming`` any more (pipelines loaded, result
    writer warmed up). A node runs for days: its start-up is not what a study
    meets, so a benchmark starts measuring once this holds."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dicomnode_runner_workers" and sample.labels == {"state": "warming"}:
                return sample.value == 0
    return False


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


# -- PostgreSQL ---------------------------------------------------------------------------------

PG_USER = "postgres"  # the superuser initdb creates, and the system user that runs it as root
PG_READY_TIMEOUT = 60.0


def pg_bindir() -> Path:
    """Debian's PostgreSQL server binaries, the newest major version installed."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").is_file()]
    if not found:
        raise BenchError(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin (apt install postgresql)"
        )
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


class Postgres:
    """A running throwaway PostgreSQL server on 127.0.0.1, trust authentication."""

    def __init__(self, port: int) -> None:
        self.port = port

    def url(self, database: str) -> str:
        """The node's ``database.url`` for ``database`` on this server."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, dbname=database, autocommit=True
        )

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (a plain identifier); its URL."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster in a temporary directory (initdb, trust authentication),
    listening on 127.0.0.1 only, on a free port, with the server's defaults otherwise
    (fsync on); stopped and removed on the way out. PostgreSQL refuses to run as root: as
    root, initdb and the server run as the ``postgres`` system user, who owns the directory
    (data and Unix socket)."""
    bindir = pg_bindir()
    user = PG_USER if os.geteuid() == 0 else None
    work = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        if user is not None:
            shutil.chown(work, user, user)
        data, log = work / "data", work / "postgres.log"
        # --no-sync: initdb does not flush the new cluster; the server's own fsync stays on
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust"]
        done = start([*initdb, "--no-sync", "-E", "UTF8"], work / "initdb.log", work, user)
        if done.wait(timeout=120) != 0:
            raise BenchError(f"initdb exited with {done.returncode}:\n{tail(work / 'initdb.log')}")
        server = Postgres(free_port())
        argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(server.port)]
        argv += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={work}"]
        proc = start(argv, log, work, user)
        deadline = time.monotonic() + PG_READY_TIMEOUT
        while True:
            try:
                server.connect().close()
                break
            except psycopg.OperationalError as exc:
                if proc.poll() is not None:
                    raise BenchError(
                        f"postgres exited with {proc.returncode}:\n{tail(log)}"
                    ) from exc
                if time.monotonic() > deadline:
                    raise BenchError(f"postgres not ready after {PG_READY_TIMEOUT:.0f} s") from exc
                time.sleep(0.2)
        yield server
    finally:
        if proc is not None:
            # SIGTERM is a smart shutdown: it waits for the clients, the node is gone by now
            stop(proc, group=True)
        shutil.rmtree(work, ignore_errors=True)


# -- reports and exits --------------------------------------------------------------------------


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
