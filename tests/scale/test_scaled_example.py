"""The scaled-out example configuration is one the node accepts, with its job store on
PostgreSQL and no password in the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dicomnode.config import load_config

SCALED = Path(__file__).resolve().parents[2] / "deploy" / "scaled" / "dicomnode.scaled.yaml"


def test_the_scaled_example_passes_config_check() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "dicomnode", "config", "check", str(SCALED)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    settings = load_config(SCALED)
    assert settings.database.url == "postgresql+psycopg://dicomnode@db-host:5432/dicomnode"
    assert settings.runner.executor == "celery"
    assert settings.storage.spool_dir == Path("/srv/dicomnode/spool")
