"""Shared test helpers: free ports, node configs, the node as a process, DCMTK."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

NODE_AET = "DICOMNODE"
SCANNER_AET = "SCANNER"
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str) -> str:
    """Path of a peer program; fails (not skips) when `make test` did not install it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise AssertionError(f"{name} is not installed; `make test` installs the test peers")
    return path


#: The URL of the database of a test's folder (made on first use), while the
#: suite runs on PostgreSQL (``DICOMNODE_TEST_DATABASE=postgresql``; see
#: tests/conftest.py): configurations made for one folder share one job store.
database_for: Callable[[Path], str] | None = None


def node_config(
    tmp_path: Path, port: int | None = None, **sections: dict[str, Any]
) -> dict[str, Any]:
    """A config mapping for a node on loopback, accepting SCANNER and STORESCU;
    its job store on a new PostgreSQL database when the suite runs on one."""
    config: dict[str, Any] = {
        "node": {"ae_title": NODE_AET, "bind": "127.0.0.1", "port": port or free_port()},
        "ingress": {
            "allowed_senders": [
                {"ae_title": SCANNER_AET},
                {"ae_title": "STORESCU"},
                {"ae_title": "ECHOSCU"},
                {"ae_title": "DICOMNODE_SCU"},
            ],
            "shutdown_grace_seconds": 20,
        },
        "storage": {"data_dir": str(tmp_path / "data"), "min_free_mb": 0},
        "assembly": {"quiet_seconds": 30, "max_wait_seconds": 3600, "poll_seconds": 0.2},
        "logging": {"level": "INFO"},
        # tests of receiving need no pipeline workers; runner tests turn them on
        "runner": {"enabled": False},
    }
    if database_for is not None:
        config["database"] = {"url": database_for(tmp_path)}
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


#: Marks a test of the SQLite file itself, skipped when the suite runs on PostgreSQL.
SQLITE_ONLY = pytest.mark.skipif(
    os.environ.get("DICOMNODE_TEST_DATABASE", "sqlite") != "sqlite",
    reason="a test of the SQLite job store file",
)


def store_of(config: dict[str, Any]) -> str:
    """What the job store of a node configured with ``config`` (a mapping of
    :func:`node_config`) opens: its database URL, or its SQLite file."""
    url = config.get("database", {}).get("url")
    return str(url) if url else str(Path(config["storage"]["data_dir"]) / "dicomnode.db")


def spool_files(spool: Path) -> list[Path]:
    """The instance files a node's spool (its ``storage.spool_path``) holds, sorted."""
    return sorted((spool / "studies").rglob("*.dcm"))


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def echo(port: int, calling: str = SCANNER_AET, called: str = NODE_AET) -> bool:
    result = subprocess.run(
        [require_tool("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        env=PEER_ENV,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def storescu(
    files: Sequence[Path],
    port: int,
    *,
    calling: str = SCANNER_AET,
    called: str = NODE_AET,
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu, verbose, over one association."""
    return subprocess.run(
        [
            require_tool("storescu"),
            "-v",
            *extra,
            "-aet",
            calling,
            "-aec",
            called,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=PEER_ENV,
        timeout=timeout,
        check=False,
    )


def store_statuses(output: str) -> list[str]:
    """The status text of every C-STORE response storescu -v printed, in order."""
    found = []
    for line in output.splitlines():
        marker = "Received Store Response ("
        if marker in line:
            found.append(line.split(marker, 1)[1].rstrip(")"))
    return found


class NodeProcess:
    """``python -m dicomnode serve`` as a child process."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, preexec: Callable[[], None] | None = None, wait: bool = True) -> NodeProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "serve", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        log.close()
        if wait:
            wait_for(self._ready, 60, "the node to answer C-ECHO", interval=0.2)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
        return echo(self.port)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


#: Dataset Trailing Padding: senders may drop it (DCMTK does); it carries nothing.
TRAILING_PADDING = 0xFFFCFFFC


def assert_same_dataset(sent: Path, received: Path) -> None:
    """Every element of ``sent`` reads back with the same value from ``received``."""
    import pydicom

    a = pydicom.dcmread(sent)
    b = pydicom.dcmread(received)
    sent_syntax, got_syntax = a.file_meta.TransferSyntaxUID, b.file_meta.TransferSyntaxUID
    if sent_syntax.is_compressed:
        # compressed data must arrive as it was: the node never asks for transcoding
        assert got_syntax == sent_syntax, f"{sent}: {sent_syntax.name} became {got_syntax.name}"
    else:
        # for native data the node prefers Explicit VR Little Endian when offered
        assert not got_syntax.is_compressed, f"{sent}: {sent_syntax.name} became {got_syntax.name}"
    # group lengths are retired and senders recompute or drop them
    keys_a = {k for k in a.keys() if k != TRAILING_PADDING and k.element != 0}
    keys_b = {k for k in b.keys() if k != TRAILING_PADDING and k.element != 0}
    assert keys_a == keys_b, f"{sent}: elements differ: {sorted(keys_a ^ keys_b)}"
    for key in keys_a:
        if key == 0x7FE00010 and sent_syntax != got_syntax:
            # native pixels re-encoded by the sender (e.g. big to little endian)
            assert (a.pixel_array == b.pixel_array).all(), f"{sent}: pixels differ"
            continue
        assert a[key].value == b[key].value, f"{sent}: {a[key].keyword or key} differs"
