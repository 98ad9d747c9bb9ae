"""Receivers of a scaled-out site: ``dicomnode serve`` processes, each with its own
port and data directory, sharing one job store on PostgreSQL (``database.url``)
and, where a test says so, one spool."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import NodeProcess, node_config, write_config


class Receiver(NodeProcess):
    """One ``dicomnode serve`` of the site, with its configuration at hand and
    the admin CLI (``dicomnode jobs``) over the shared job store."""

    def __init__(self, config: dict[str, Any], config_path: Path, log_path: Path) -> None:
        super().__init__(config_path, config["node"]["port"], log_path)
        self.config = config

    def cli_json(self, *args: str) -> Any:
        """``dicomnode ARGS --json -c CONFIG``, parsed."""
        result = subprocess.run(
            [sys.executable, "-m", "dicomnode", *args, "--json", "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def jobs(self, study_uid: str) -> list[dict[str, Any]]:
        """The study's rounds and runs (``dicomnode jobs --study``), as JSON rows."""
        return list(self.cli_json("jobs", "--study", study_uid, "--limit", "1000"))


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """Start a receiver ``name`` on the job store ``url``: its own port, data
    directory and log, the spool at ``spool`` when given (a shared spool), and
    ``sections`` on top of the tests' usual node config. Stopped at teardown."""
    started: list[Receiver] = []

    def start(name: str, url: str, spool: Path | None = None, **sections: Any) -> Receiver:
        storage: dict[str, Any] = {"data_dir": str(tmp_path / name / "data")}
        if spool is not None:
            storage["spool_dir"] = str(spool)
        config = node_config(tmp_path, **sections)
        config["storage"].update(storage)
        config["database"] = {"url": url}
        path = write_config(tmp_path / f"{name}.yaml", config)
        proc = Receiver(config, path, tmp_path / f"{name}.log")
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        proc.stop()
