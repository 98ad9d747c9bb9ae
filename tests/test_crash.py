"""kill -9 in the middle of a push: nothing acknowledged is lost, the study completes once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.jobs import JobState, SQLiteJobStore
from tests.conftest import wait_for_state
from tests.helpers import (
    NODE_AET,
    PEER_ENV,
    SCANNER_AET,
    SQLITE_ONLY,
    assert_same_dataset,
    node_config,
    require_tool,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def acknowledged(storescu_log: str) -> list[str]:
    """Files storescu -v saw a Success response for."""
    acked, current = [], None
    for line in storescu_log.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


def recorded(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` now."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie holds no socket and counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-receiving-processes"])
@SQLITE_ONLY  # counts rows in the SQLite file while the node writes it
def test_kill_9_during_a_push(node_process, tmp_path, ct_series, processes):
    """With two receiving processes, a kill -9 of the main process ends them too
    (nothing would assemble what they store, and they would keep the port), and
    the restart binds the port."""
    config = node_config(
        tmp_path,
        assembly={"quiet_seconds": 10, "poll_seconds": 0.1},
        ingress={"processes": processes},
    )
    db = tmp_path / "data" / "dicomnode.db"
    node = node_process(config)
    assert node.proc is not None
    children = children_of(node.proc.pid)
    assert len(children) >= processes - 1
    series = ct_series(slices=200, size=128)
    by_sop = dict(zip(map(str, series.paths), series.sop_uids, strict=True))

    push = subprocess.Popen(
        [
            require_tool("storescu"),
            "-v",
            "-aet",
            SCANNER_AET,
            "-aec",
            NODE_AET,
            "127.0.0.1",
            str(node.port),
            *map(str, series.paths),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=PEER_ENV,
    )
    wait_for(lambda: recorded(db) >= 60, 60, "60 instances to be recorded", interval=0.005)
    node.kill9()
    try:
        wait_for(
            lambda: not any(alive(pid) for pid in children),
            10,
            "the receiving processes to end with the main process",
        )
    finally:
        for pid in filter(alive, children):  # leave no orphan behind a failure
            os.kill(pid, signal.SIGKILL)
    out, _ = push.communicate(timeout=60)
    acked = acknowledged(out)
    # recorded-but-not-yet-acknowledged instances are expected at the moment of the kill
    assert 40 <= len(acked) < 200, f"kill came too late or too early: {len(acked)} acked"

    node_process(config)
    rest = [p for p in series.paths if str(p) not in set(acked)]
    result = storescu(rest, node.port)
    assert result.returncode == 0, result.stderr

    store = SQLiteJobStore(db)
    spool = tmp_path / "data" / "spool"
    assert list((spool / "tmp").iterdir()) == []
    for path in acked:
        sop = by_sop[path]
        assert store.has_instance(sop), f"acknowledged instance {sop} lost"
        (stored,) = list((spool / "studies").rglob(f"{sop}.dcm"))
        assert_same_dataset(Path(path), stored)
    (job,) = wait_for_state(store, series.study_uid, JobState.COMPLETE, timeout=40)
    assert job.instance_count == 200
    assert len(store.jobs()) == 1
    assert [t.to_state for t in store.history(job.id)].count(JobState.COMPLETE) == 1
    assert len(list((spool / "studies").rglob("*.dcm"))) == 200


ORPHAN = """
import socket, sys
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
print("listening", flush=True)
sys.stdin.read()
"""


def test_start_up_reclaims_the_port_from_a_receiving_process_left_running(node_process, tmp_path):
    """A receiving process of an earlier run that still listens (as on a system
    without PR_SET_PDEATHSIG) and recorded itself under <data_dir>/run is
    killed at start-up, and the node binds the port."""
    config = node_config(tmp_path, ingress={"processes": 2})
    orphan = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(config["node"]["port"])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert orphan.stdout is not None and orphan.stdout.readline() == "listening\n"
        start = Path(f"/proc/{orphan.pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
        run = tmp_path / "data" / "run"
        run.mkdir(parents=True)
        (run / "ingress-0.pid").write_text(f"{orphan.pid} {start}\n")
        node = node_process(config)
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert (
            f"killed 1 receiving process(es) an earlier run left listening (pid {orphan.pid})"
            in (node.log())
        )
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
