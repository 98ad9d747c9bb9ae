"""PostgreSQL (Debian's postgresql package) as the shared job store, started by a
test on loopback in a temporary directory.

The server is never the system's cluster (``pg_lsclusters``, port 5432): each
:class:`PostgresServer` runs ``initdb`` into a directory of its own and starts
``postgres`` from the newest ``/usr/lib/postgresql/<version>/bin`` on a free port
of 127.0.0.1, its Unix socket in that same directory. PostgreSQL refuses to run
as root: as root, the cluster belongs to Debian's ``postgres`` system user and
``initdb`` and ``postgres`` run as that user (``setpriv``); otherwise they run as
the current user. Authentication is ``trust`` for local and loopback connections
(the superuser is ``postgres``); ``fsync`` stays on, as in production.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.helpers import free_port, wait_for

#: Where Debian installs each PostgreSQL major version's server programs.
DEBIAN_ROOT = Path("/usr/lib/postgresql")
#: The superuser ``initdb`` creates, and the system user a root test runs it as.
SUPERUSER = "postgres"


def postgres_bin() -> Path:
    """The ``bin`` folder of the newest PostgreSQL under ``/usr/lib/postgresql``.

    Raises
    ------
    AssertionError
        No server is installed (as :func:`tests.helpers.require_tool`: `make test`
        installs the test peers, so a missing server fails rather than skips).
    """
    found = sorted(
        (int(d.name), d / "bin")
        for d in (DEBIAN_ROOT.iterdir() if DEBIAN_ROOT.is_dir() else ())
        if d.name.isdigit() and (d / "bin" / "postgres").is_file()
    )
    if not found:
        raise AssertionError(
            f"no PostgreSQL server under {DEBIAN_ROOT}; `make test` installs the test peers"
        )
    return found[-1][1]


def _valid_name(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1 with its own data directory.

    ``stop()`` then ``start()`` on the same object keeps every committed row (the
    data directory stays; a fast shutdown checkpoints); :meth:`crash` stops it as
    a power cut would (immediate shutdown: the next start replays the WAL).

    Parameters
    ----------
    root : Path, optional
        An empty or missing directory for the cluster (``data/``), its socket and
        its log; default: a new directory under the system's temporary folder,
        removed by :meth:`remove`. As root it must be a place the ``postgres``
        user can reach (pytest's ``tmp_path`` under ``/tmp/pytest-of-root`` is not).
    port : int, optional
        Default: a free port, kept across restarts.
    """

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="dicomnode-pg-")) if root is None else root
        self.port = port or free_port()
        self.bin = postgres_bin()
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(SUPERUSER)
            self._uid, self._gid = user.pw_uid, user.pw_gid
            self._as = [
                shutil.which("setpriv") or "/usr/bin/setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--init-groups",
                "--",
            ]
        else:
            self._uid, self._gid = os.geteuid(), os.getegid()

    # -- addresses ------------------------------------------------------------

    def url(self, dbname: str) -> str:
        """The node's ``database.url`` for database ``dbname`` of this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{_valid_name(dbname)}"

    def conninfo(self, dbname: str) -> str:
        """A libpq connection string (for psycopg and psql) for ``dbname``."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={_valid_name(dbname)}"

    # -- life -----------------------------------------------------------------

    def _run_as_owner(self, command: Sequence[str]) -> list[str]:
        return [*self._as, *command]

    def start(self) -> PostgresServer:
        """Create the cluster on first use, start the server, wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        os.chown(self.root, self._uid, self._gid)
        if not (self.data / "PG_VERSION").is_file():
            self._initdb()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._run_as_owner(
                    [
                        str(self.bin / "postgres"),
                        "-D",
                        str(self.data),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        f"port={self.port}",
                        "-c",
                        f"unix_socket_directories={self.root}",
                        "-c",
                        "fsync=on",
                        "-c",
                        "synchronous_commit=on",
                        "-c",
                        "max_connections=200",
                        "-c",
                        "logging_collector=off",
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(self._up, 60, "PostgreSQL to accept connections", interval=0.1)
        return self

    def _initdb(self) -> None:
        with self.log_path.open("ab") as log:
            log.flush()
            # --no-sync only skips syncing initdb's own files; the server runs with fsync on
            result = subprocess.run(
                self._run_as_owner(
                    [
                        str(self.bin / "initdb"),
                        "-D",
                        str(self.data),
                        "--username",
                        SUPERUSER,
                        "--auth-local=trust",
                        "--auth-host=trust",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise AssertionError(f"initdb failed ({result.returncode}):\n{self.log()}")

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return result.returncode == 0

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _shutdown(self, signum: int, timeout: float = 60) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # immediate shutdown: the postmaster takes its backends down with it
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, the cluster checkpoints."""
        self._shutdown(signal.SIGINT)

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT), as a crash: no checkpoint; the next
        :meth:`start` recovers from the WAL and keeps every committed row."""
        self._shutdown(signal.SIGQUIT)

    def restart(self) -> PostgresServer:
        """:meth:`stop` then :meth:`start`: the same port, the same data."""
        self.stop()
        return self.start()

    def remove(self) -> None:
        """Stop the server and, if this object made its directory, delete it."""
        self.stop()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- SQL ------------------------------------------------------------------

    def psql(self, dbname: str, sql: str) -> str:
        """Run ``sql`` in ``dbname`` with ``psql`` (unaligned, tuples only, stop on
        the first error); return what it printed.

        Raises
        ------
        AssertionError
            psql failed; the message holds its error output.
        """
        result = subprocess.run(
            [
                str(self.bin / "psql"),
                "--no-psqlrc",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.conninfo(dbname),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        if result.returncode != 0:
            raise AssertionError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; return its :meth:`url`."""
        self.psql("postgres", f'CREATE DATABASE "{_valid_name(name)}"')
        return self.url(name)
