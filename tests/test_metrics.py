"""Metrics, health endpoints and JSON logs of a running node, scraped over HTTP
after real DCMTK pushes."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from dicomnode.jobs import JobState, SQLiteJobStore
from dicomnode.synthetic import write_ct_series
from tests.helpers import (
    PEER_ENV,
    SCANNER_AET,
    NodeProcess,
    free_port,
    node_config,
    require_tool,
    spool_files,
    store_of,
    storescu,
    wait_for,
)
from tests.runner.faulty import LOAD_GATE_ENV
from tests.test_cli import dicomnode

pytestmark = [pytest.mark.peers]

CANARY_NAME = "CANARYNAME^ZEBULON"
CANARY_ID = "CANARY-ID-90817"

#: A CT chest rule to ct-lung, delivering to a folder.
ROUTING = {
    "rules": [
        {
            "name": "ct-chest",
            "match": {"series": {"Modality": {"equals": "CT"}}},
            "pipeline": "ct-lung",
            "destinations": ["results"],
        }
    ]
}


def get(url: str) -> tuple[int, str, bytes]:
    """GET ``url``: status, content type, body (an error status too)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by name and sorted labels."""
    status, content_type, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    """A sample's value; 0 when it was not exposed (a counter never moved)."""
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def dataset_bytes(path: Path) -> int:
    """The bytes of the dataset in a received file: the file less its preamble,
    prefix and File Meta Information (as its group length says)."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return path.stat().st_size - 132 - 12 - int(meta.FileMetaInformationGroupLength)


def metrics_node(tmp_path: Path, **sections: dict[str, Any]) -> tuple[dict[str, Any], int]:
    metrics_port = free_port()
    config = node_config(
        tmp_path,
        metrics={"enabled": True, "port": metrics_port},
        assembly={"quiet_seconds": 1, "max_wait_seconds": 3600, "poll_seconds": 0.2},
        **sections,
    )
    return config, metrics_port


@pytest.mark.slow
def test_a_push_moves_the_counters_by_what_was_pushed(
    node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """Two pushes from SCANNER and one from STORESCU: the instance and byte
    counters per calling AE move by exactly what each pushed; an unknown AE's
    association is counted refused; the ct-lung run gives a sample to the run
    histogram and its steps; export counts its attempt; the health endpoints
    answer; the JSON log lines parse and name no patient."""
    config, port = metrics_node(
        tmp_path,
        runner={"enabled": True, "device": "cpu", "poll_seconds": 0.2, "workers": 1},
        routing=ROUTING,
        destinations={"results": {"type": "folder", "path": str(tmp_path / "delivered")}},
        logging={"level": "INFO", "format": "json"},
    )
    node = node_process(config)
    before = samples(port)
    assert value(before, "dicomnode_instances_received_total", calling_ae=SCANNER_AET) == 0

    first = write_ct_series(
        tmp_path / "a",
        slices=20,
        rows=64,
        columns=64,
        patient_name=CANARY_NAME,
        patient_id=CANARY_ID,
    )
    second = write_ct_series(tmp_path / "b", slices=3, rows=32, columns=32)
    third = write_ct_series(tmp_path / "c", slices=2, rows=32, columns=32)
    assert storescu(first.paths, node.port).returncode == 0
    assert storescu(second.paths, node.port).returncode == 0
    assert storescu(third.paths, node.port, calling="STORESCU").returncode == 0
    refused = subprocess.run(
        [
            require_tool("echoscu"),
            "-aet",
            "INTRUDER",
            "-aec",
            "DICOMNODE",
            "127.0.0.1",
            str(node.port),
        ],
        capture_output=True,
        env=PEER_ENV,
        timeout=30,
        check=False,
    )
    assert refused.returncode != 0

    spool = Path(config["storage"]["data_dir"]) / "spool"
    received: dict[str, list[Path]] = {SCANNER_AET: [], "STORESCU": []}
    third_uids = set(third.sop_uids)
    for path in spool_files(spool):
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        received["STORESCU" if sop in third_uids else SCANNER_AET].append(path)
    assert len(received[SCANNER_AET]) == 23 and len(received["STORESCU"]) == 2

    found = samples(port)
    for ae, paths in received.items():
        assert value(found, "dicomnode_instances_received_total", calling_ae=ae) == len(paths)
        assert value(found, "dicomnode_bytes_received_total", calling_ae=ae) == sum(
            dataset_bytes(p) for p in paths
        )
    assert value(found, "dicomnode_c_store_responses_total", status="0x0000") == 25
    assert (
        value(found, "dicomnode_associations_refused_total", reason="calling_ae_not_allowed") == 1
    )
    assert value(found, "dicomnode_spool_free_bytes") > 0

    store = SQLiteJobStore(store_of(config))

    def run_done() -> bool:
        runs = [j for j in store.jobs(study_instance_uid=first.study_uid) if j.kind == "run"]
        return bool(runs) and runs[0].state in (JobState.DONE, JobState.DEAD)

    wait_for(run_done, 180, "the ct-lung run to finish", interval=0.3)
    found = samples(port)
    assert value(found, "dicomnode_run_seconds_count", pipeline="ct-lung", outcome="ok") == 1
    assert value(found, "dicomnode_run_seconds_sum", pipeline="ct-lung", outcome="ok") > 0
    for step in ("load", "pipeline", "save", "write", "describe"):
        assert value(found, "dicomnode_run_step_seconds_count", pipeline="ct-lung", step=step) == 1
    assert value(found, "dicomnode_export_attempts_total", destination="results") >= 1
    assert value(found, "dicomnode_jobs", kind="run", state="DONE") >= 1
    # the second and third studies are too small for ct-lung: their runs are DEAD
    assert sum(v for (name, _), v in found.items() if name == "dicomnode_jobs") >= 6

    # the admin's preview of the study's result, from the node's job store
    shown = dicomnode(
        "preview",
        first.study_uid,
        "-c",
        str(tmp_path / "node0.yaml"),
        "-o",
        str(tmp_path / "p.png"),
    )
    assert shown.returncode == 0, shown.stderr
    image = np.asarray(Image.open(tmp_path / "p.png"))
    assert image.shape == (64, 64, 3) and (image[..., 0] != image[..., 2]).any()

    status, content_type, body = get(f"http://127.0.0.1:{port}/healthz")
    assert (status, content_type) == (200, "application/json")
    status, _, body = get(f"http://127.0.0.1:{port}/readyz")
    report = json.loads(body)
    assert status == 200, report
    assert report["failed"] == [] and report["checks"]["runner"]["ok"]
    assert get(f"http://127.0.0.1:{port}/nothing")[0] == 404

    node.stop()
    lines = [line for line in node.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "process", "logger", "message"} <= set(records[0])
    assert any(r.get("job_id") is not None for r in records)
    assert any("ct-lung" in r["message"] for r in records)
    text = node.log()
    assert CANARY_NAME.split("^")[0] not in text and CANARY_ID not in text


def test_readyz_names_the_disk_below_its_floor(
    node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """With ``storage.min_free_mb`` above the disk's free space the node runs
    (it answers C-ECHO and ``/healthz``) but is not ready: 503, naming the disk."""
    config, port = metrics_node(tmp_path)
    config["storage"]["min_free_mb"] = 1024**3  # a petabyte
    node_process(config)
    status, content_type, body = get(f"http://127.0.0.1:{port}/readyz")
    report = json.loads(body)
    assert (status, content_type) == (503, "application/json")
    assert report["status"] == "unavailable" and report["failed"] == ["disk"]
    assert "floor 1073741824 MiB" in report["checks"]["disk"]["detail"]
    assert report["checks"]["job_store"]["ok"] and report["checks"]["ingress"]["ok"]
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200


def test_runner_workers_count_warm_once_their_pipelines_are_loaded(
    node_process: Callable[..., NodeProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose pipeline is still loading counts ``warming``; once the
    load ends and the writer warmed up it counts ``warm``."""
    gate = tmp_path / "gate"
    monkeypatch.setenv(LOAD_GATE_ENV, str(gate))
    config, port = metrics_node(
        tmp_path,
        runner={
            "enabled": True,
            "workers": 1,
            "device": "cpu",
            "threads": 1,
            "plugins": ["tests.runner.faulty:LoadGated"],
            "models_dir": str(tmp_path / "models"),
        },
        routing={
            "rules": [
                {
                    "name": "gated",
                    "match": {"series": {"Modality": {"equals": "CT"}}},
                    "pipeline": "test-load-gated",
                }
            ]
        },
    )
    node_process(config)
    found = samples(port)
    assert value(found, "dicomnode_runner_workers", state="warming") == 1
    assert value(found, "dicomnode_runner_workers", state="warm") == 0
    gate.touch()
    wait_for(
        lambda: value(samples(port), "dicomnode_runner_workers", state="warm") == 1,
        60,
        "the worker to count warm",
    )
    assert value(samples(port), "dicomnode_runner_workers", state="warming") == 0


@pytest.mark.slow
def test_receiving_processes_add_up(
    node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """With two receiving processes each counts in its own process; the scrape
    of the main process shows their sum, exactly what was pushed."""
    config, port = metrics_node(tmp_path, ingress={"processes": 2})
    node = node_process(config)
    pushed = 0
    for index in range(4):
        series = write_ct_series(tmp_path / f"s{index}", slices=3, rows=16, columns=16)
        assert storescu(series.paths, node.port).returncode == 0
        pushed += 3
    spool = Path(config["storage"]["data_dir"]) / "spool"
    files = spool_files(spool)
    assert len(files) == pushed
    found = samples(port)
    assert value(found, "dicomnode_instances_received_total", calling_ae=SCANNER_AET) == pushed
    assert value(found, "dicomnode_bytes_received_total", calling_ae=SCANNER_AET) == sum(
        dataset_bytes(p) for p in files
    )
    assert value(found, "dicomnode_associations_accepted_total") >= 4
    wait_for(
        lambda: value(samples(port), "dicomnode_associations_active") == 0,
        10,
        "every association to be counted closed",
    )


@pytest.mark.slow
def test_export_attempts_and_hl7_ack_codes_per_destination(
    make_settings: Callable[..., Any],
    start_node: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """A RIS that rejects (AR) the first ORU and accepts (AA) it again: two
    attempts and one failure to the RIS, one ACK of each code; the folder got
    its objects in one attempt. Read through the node's own exposition, as a
    web app mounts it."""
    from tests.export.mllp_ris import running_ris

    with running_ris(["AR", "AA"]) as ris:
        settings = make_settings(
            assembly={"quiet_seconds": 1, "poll_seconds": 0.1},
            runner={"enabled": True, "device": "cpu", "threads": 1, "poll_seconds": 0.1},
            routing={
                "rules": [
                    {
                        "name": "ct",
                        "pipeline": "ct-lung",
                        "destinations": ["disk"],
                        "notify": ["ris"],
                    }
                ]
            },
            destinations={
                "disk": {"type": "folder", "path": str(tmp_path / "disk")},
                "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port, "timeout_seconds": 3},
            },
            export={"poll_seconds": 0.1, "backoff_seconds": 0.2, "max_backoff_seconds": 0.5},
        )
        node = start_node(settings)
        series = write_ct_series(tmp_path / "ct", slices=20, rows=64, columns=64)
        assert storescu(series.paths, settings.node.port).returncode == 0
        store = SQLiteJobStore(settings.database_url)

        def settled() -> bool:
            runs = [j for j in store.jobs(study_instance_uid=series.study_uid) if j.kind == "run"]
            return bool(runs) and runs[0].state in (JobState.DONE, JobState.DEAD)

        wait_for(settled, 180, "the run's export to settle", interval=0.2)
        assert len(ris.messages()) == 2

    body, content_type = node.metrics.exposition(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(found, "dicomnode_hl7_acks_total", destination="ris", code="AR") == 1
    assert value(found, "dicomnode_hl7_acks_total", destination="ris", code="AA") == 1
    assert value(found, "dicomnode_export_attempts_total", destination="ris") == 2
    assert value(found, "dicomnode_export_failures_total", destination="ris") == 1
    assert value(found, "dicomnode_export_attempts_total", destination="disk") == 1
    assert value(found, "dicomnode_export_failures_total", destination="disk") == 0
    assert value(found, "dicomnode_export_items_total", destination="disk", outcome="delivered") > 0
    # OpenMetrics when the scraper asks for it
    body, content_type = node.metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
