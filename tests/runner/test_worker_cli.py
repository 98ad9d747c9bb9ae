"""``dicomnode worker`` refuses, naming what to fix, before it loads anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.cli import main
from tests.helpers import node_config, write_config


def test_a_worker_needs_the_celery_executor(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "node.yaml", node_config(tmp_path))
    assert main(["worker", "-c", str(config), "--pipelines", "ct-lung"]) == 2
    assert "runner.executor: must be celery" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("pipelines", "problem"),
    [
        ("nope,ct-lung", "--pipelines: no pipeline 'nope' is installed"),
        (",", "--pipelines: name at least one pipeline"),
    ],
)
def test_a_worker_refuses_pipelines_it_cannot_serve(
    tmp_path: Path, capsys, pipelines: str, problem: str
) -> None:
    celery = {"broker": "redis://127.0.0.1:1/0"}
    settings = node_config(tmp_path, runner={"executor": "celery", "celery": celery})
    config = write_config(tmp_path / "node.yaml", settings)
    assert main(["worker", "-c", str(config), "--pipelines", pipelines]) == 2
    assert problem in capsys.readouterr().err
