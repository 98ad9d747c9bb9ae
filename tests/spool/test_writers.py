"""Half-written files in a spool shared by several nodes: a node that starts
removes only what a writer that is gone left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dicomnode.resultfile import STAGING_MARK, remove_staging
from dicomnode.spool import Spool
from dicomnode.writers import writer_tag


def _tag_of(pid: int) -> str:
    return writer_tag().split("~", 1)[0] + f"~{pid}"


def _ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_node_that_starts_removes_only_the_partial_files_of_writers_that_are_gone(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "live": f"1.2.3.{_tag_of(alive.pid)}.abc.part",  # another receiving process
            "other-host": "1.2.4.wsomewhere_else~1.abc.part",  # a node on another host
            "gone": f"1.2.5.{_tag_of(_ended_pid())}.abc.part",  # a crash of this host
            "untagged": "1.2.6.123.abc.part",  # an earlier release
        }
        for name in names.values():
            (spool.tmp_dir / name).write_bytes(b"partial")
        assert spool.clean_tmp() == 2
        left = sorted(path.name for path in spool.tmp_dir.iterdir())
        assert left == sorted([names["live"], names["other-host"]])

        results = tmp_path / "outbox"
        (results / f"job-1{STAGING_MARK}{_tag_of(alive.pid)}.ab12").mkdir(parents=True)
        (results / f"job-2{STAGING_MARK}{_tag_of(_ended_pid())}.cd34").mkdir()
        assert remove_staging(results) == 1
        assert [path.name for path in results.iterdir()] == [
            f"job-1{STAGING_MARK}{_tag_of(alive.pid)}.ab12"
        ]
    finally:
        alive.kill()
        alive.wait()
