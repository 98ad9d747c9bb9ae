"""The command line: send, studies, jobs, and a clean SIGTERM."""

from __future__ import annotations

import os
import signal
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
    node_config,
    require_tool,
    store_of,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.peers


def dicomnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_send_studies_and_jobs(make_settings, start_node, ct_series, tmp_path):
    settings = make_settings(assembly={"quiet_seconds": 2, "poll_seconds": 0.1})
    start_node(settings)
    config = write_config(tmp_path / "cli.yaml", node_config(tmp_path, settings.node.port))
    series = ct_series(slices=6, size=16)
    (series.paths[0].parent / "notes.txt").write_text("not DICOM")

    sent = dicomnode(
        "send",
        str(series.paths[0].parent),
        "--to",
        f"127.0.0.1:{settings.node.port}",
        "--aet",
        NODE_AET,
        "-q",
    )
    assert sent.returncode == 0, sent.stderr
    assert "sent 6, failed 0, skipped 1" in sent.stdout
    assert "notes.txt" in sent.stderr

    store = SQLiteJobStore(settings.database_url)
    (job,) = wait_for_state(store, series.study_uid, JobState.DISCARDED, timeout=20)

    studies = dicomnode("studies", "--full", "-c", str(config))
    assert studies.returncode == 0, studies.stderr
    (row,) = [line for line in studies.stdout.splitlines() if series.study_uid in line]
    assert row.split()[1:8] == ["CT", "1", "6", "0", "0", "1", "DISCARDED"]
    assert "PHANTOM" not in studies.stdout  # no patient data in the table

    jobs = dicomnode("jobs", "--full", "-c", str(config))
    assert jobs.returncode == 0
    (jrow,) = [line.split() for line in jobs.stdout.splitlines() if series.study_uid in line]
    assert jrow[:6] == [str(job.id), "study", series.study_uid, "1", "DISCARDED", "6"]

    history = dicomnode("jobs", str(job.id), "-c", str(config))
    assert history.returncode == 0
    lines = history.stdout.splitlines()
    assert "6 instance(s), now DISCARDED" in lines[0]
    assert [line.split()[2] for line in lines[3:]] == ["RECEIVED", "COMPLETE", "DISCARDED"]
    assert "quiet for 2 s" in history.stdout

    missing = dicomnode("jobs", "999", "-c", str(config))
    assert missing.returncode == 1 and "no job 999" in missing.stderr


def test_send_to_a_node_that_refuses_us(make_settings, start_node, ct_series):
    settings = make_settings()
    start_node(settings)
    series = ct_series(slices=1, size=16)
    result = dicomnode(
        "send",
        str(series.paths[0]),
        "--to",
        f"127.0.0.1:{settings.node.port}",
        "--aet",
        NODE_AET,
        "--calling-aet",
        "STRANGER",
        "-q",
    )
    assert result.returncode == 2
    assert "rejected" in result.stderr


def test_send_with_a_bad_address():
    result = dicomnode("send", "x.dcm", "--to", "nohost", "--aet", NODE_AET)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


@SQLITE_ONLY  # a database server is never "missing" the way a file is
def test_studies_without_a_job_store(tmp_path: Path):
    config = write_config(tmp_path / "c.yaml", node_config(tmp_path))
    result = dicomnode("studies", "-c", str(config))
    assert result.returncode == 1 and "no job store" in result.stderr


@pytest.mark.slow
def test_sigterm_finishes_the_push_in_flight(node_process, tmp_path, ct_series):
    config = node_config(tmp_path)
    node = node_process(config)
    series = ct_series(slices=150, size=128)
    db = store_of(config)
    push = subprocess.Popen(
        [
            require_tool("storescu"),
            "-aet",
            SCANNER_AET,
            "-aec",
            NODE_AET,
            "127.0.0.1",
            str(node.port),
            *map(str, series.paths),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=PEER_ENV,
    )
    store = SQLiteJobStore(db)
    wait_for(lambda: len(store.instances(series.study_uid)) >= 10, 60, "the push to start")
    assert node.terminate(timeout=90) == 0
    _, err = push.communicate(timeout=60)
    assert push.returncode == 0, err
    assert len(store.instances(series.study_uid)) == 150
    assert "shutting down" in node.log()
    # and the port is closed: no new association is accepted
    echo = subprocess.run(
        [
            require_tool("echoscu"),
            "-aet",
            SCANNER_AET,
            "-aec",
            NODE_AET,
            "127.0.0.1",
            str(node.port),
        ],
        capture_output=True,
        env=PEER_ENV,
        check=False,
    )
    assert echo.returncode != 0


def test_a_second_node_on_the_same_data_dir_or_port_refuses_to_start(node_process, tmp_path):
    config = node_config(tmp_path, ingress={"processes": 2})
    node_process(config)
    same_dir = write_config(tmp_path / "twin.yaml", node_config(tmp_path))
    result = dicomnode("serve", "-c", str(same_dir))
    assert result.returncode == 1 and "already running" in result.stderr

    other_dir = tmp_path / "other"
    other_dir.mkdir()
    same_port = write_config(
        tmp_path / "port.yaml",
        node_config(other_dir, config["node"]["port"], ingress={"processes": 2}),
    )
    result = dicomnode("serve", "-c", str(same_port))
    assert result.returncode == 1 and "cannot listen" in result.stderr


def test_ctrl_c_stops_the_node_and_its_workers_quietly(node_process, tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the whole process group: the node
    shuts down, and its pipeline workers leave it to the node instead of dying
    with a KeyboardInterrupt traceback."""
    config = node_config(tmp_path)
    config["runner"] = {"enabled": True, "device": "cpu", "threads": 1, "workers": 1}
    node = node_process(config, preexec=os.setsid)
    wait_for(lambda: "ready on cpu" in node.log(), 60, "the worker to start")
    assert node.proc is not None
    os.killpg(node.proc.pid, signal.SIGINT)
    assert node.proc.wait(timeout=60) == 0, node.log()
    assert "Traceback" not in node.log() and "KeyboardInterrupt" not in node.log()
