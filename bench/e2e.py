"""End-to-end benchmark: a CT pushed into the node until its SEG and SR are in the PACS and
the RIS has acknowledged the ORU^R01, timed per stage from the node's own records.

What it runs
------------
On loopback, each with its own free ports and temporary directory:

* Orthanc (``/usr/sbin/Orthanc``, its own config and storage) as the PACS,
* hl7apy's ``MLLPServer`` in a thread as the RIS, answering every ORU^R01 with AA,
* the node (``python -m dicomnode serve``) with one rule: CT → ``ct-lung``, the DICOM objects
  to the PACS and a notification to the RIS; assembly ``quiet_seconds`` from ``--quiet``
  (2 s), the stages' polling at the node's defaults (``--poll`` sets it: hand-offs are
  signalled, polling is only the fallback), ``runner.device: auto`` (CUDA when there is one).
  The push starts once ``/metrics`` counts the runner's worker warm (pipeline loaded, result
  writer warmed up): a node runs for days, and only the first study after a start would wait
  for that.

Synthetic CTs (default 256 slices of 512x512; ``--studies``, default 3, each its own
study) are pushed one after the other with DCMTK ``storescu``, each over one association,
each once the one before is DONE. For each the benchmark checks what a user would: the SEG
and the SR are in Orthanc in the study of the CT (REST API), and the RIS received exactly
one ORU^R01 for that study. One study is one sample of a noisy machine: the table shows the
study of median overhead, and the target line the median.

How to read the table
---------------------
Every span comes from the node's job store (the study round's ``last_instance_at``, the
timestamped state transitions, the outbox rows' ``updated_at``) or from the worker's
``result.json`` ``timings``; nothing is timed from outside. "runner, rest" is the part of
RUNNING → RESULTS_WRITTEN the worker's timings do not cover: handing the task to the worker,
checking the input, recording the outcome. HL7 is sent after the PACS
delivery in the same export pass, so its span (from EXPORTING) includes the PACS span.
The target line counts as overhead everything between the last instance received and DONE
except the pipeline's compute and the configured quiet period (the quiet period's overshoot
counts); it is printed as a share of the pipeline's compute and in seconds, each with its
target. The figures depend on the machine (CPU count and device are printed); one run is
one sample.

Run ``python bench/e2e.py`` from the repository root (``make bench``); ``--help`` lists the
flags. A failed check makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message
from peers import (
    CALLING_AET,
    CHILD_ENV,
    ORTHANC,
    BenchError,
    echo,
    free_port,
    on_sigterm,
    start,
    stop,
    table,
    tail,
    workers_warm,
)

from dicomnode.synthetic import write_ct_series

NODE_AET = "DICOMNODE"
ORTHANC_AET = "ORTHANC"
ORU_TYPE = "ORU^R01^ORU_R01"
#: the absolute target for the node's own time on the 256-slice CT
OVERHEAD_TARGET_S = 1.5
READY_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parent.parent


def wait_until(ready: Any, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Poll ``ready()`` until true; fail when ``proc`` exits or after READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        if ready():
            return
        time.sleep(0.2)
    raise BenchError(f"{what} not ready after {READY_TIMEOUT:.0f} s:\n{tail(log)}")


# -- the PACS -----------------------------------------------------------------------------------


class Orthanc:
    """Orthanc with its own config and storage, SyncStorageArea on, as the PACS."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / "orthanc.log"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True)
        config = {
            "Name": "bench-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True,
            "SyncStorageArea": True,
            "TcpNoDelay": True,
            "Plugins": [],
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self.proc = start([ORTHANC, str(path)], self.log, self.workdir)
        wait_until(self._up, self.proc, "Orthanc", self.log)

    def _up(self) -> bool:
        try:
            self.get("/system")
        except (urllib.error.URLError, OSError):
            return False
        return True

    def _open(self, request: urllib.request.Request | str) -> Any:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        return self._open(f"http://127.0.0.1:{self.http_port}{path}")

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return self._open(request)

    def series_of(self, study_uid: str) -> list[dict[str, Any]]:
        """Every series of the one study with ``study_uid``; fails when there are several."""
        studies = self.post(
            "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
        )
        if len(studies) != 1:
            raise BenchError(f"Orthanc holds {len(studies)} studies with the CT's Study UID")
        series: list[dict[str, Any]] = self.get(f"/studies/{studies[0]}/series")
        return series

    def shutdown(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            stop(proc)


# -- the RIS ------------------------------------------------------------------------------------


class RIS:
    """hl7apy's MLLP server in a thread, answering AA to every ORU^R01 it records."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()
        self.server = MLLPServer("127.0.0.1", 0, {ORU_TYPE: (_AckHandler, self)}, timeout=10)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def launch(self) -> None:
        self.thread.start()

    def messages(self) -> list[str]:
        with self.lock:
            return list(self.received)

    def shutdown(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(5)
        self.server.server_close()


class _AckHandler(AbstractHandler):  # type: ignore[misc]
    def __init__(self, message: str, ris: RIS) -> None:
        super().__init__(message)
        self.ris = ris

    def reply(self) -> str:
        with self.ris.lock:
            self.ris.received.append(self.incoming_message)
        incoming = parse_message(self.incoming_message)
        control_id = incoming.msh.msh_10.to_er7()
        ack = Message("ACK", version="2.5.1")
        ack.msh.msh_3 = "RIS"
        ack.msh.msh_4 = "HOSPITAL"
        ack.msh.msh_5 = incoming.msh.msh_3.to_er7()
        ack.msh.msh_6 = incoming.msh.msh_4.to_er7()
        ack.msh.msh_7 = datetime.now().strftime("%Y%m%d%H%M%S")
        ack.msh.msh_9 = "ACK^R01^ACK"
        ack.msh.msh_10 = "ACK-" + control_id
        ack.msh.msh_11 = "P"
        ack.msh.msh_12 = "2.5.1"
        ack.msa.msa_1 = "AA"
        ack.msa.msa_2 = control_id
        mllp: str = ack.to_mllp()
        return mllp


# -- the node -----------------------------------------------------------------------------------


class Node:
    """``python -m dicomnode serve`` with the benchmark's rule and destinations."""

    def __init__(
        self, workdir: Path, quiet: float, pacs_port: int, ris_port: int, poll: float | None
    ) -> None:
        self.workdir = workdir
        self.poll = poll
        self.log = workdir / "node.log"
        self.data = workdir / "data"
        self.port = free_port()
        self.metrics_port = free_port()
        self.quiet = quiet
        self.pacs_port = pacs_port
        self.ris_port = ris_port
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        polling = {} if self.poll is None else {"poll_seconds": self.poll}
        return {
            "node": {"ae_title": NODE_AET, "bind": "127.0.0.1", "port": self.port},
            "ingress": {"allow_any": True},
            "storage": {"data_dir": str(self.data), "min_free_mb": 0},
            "assembly": {"quiet_seconds": self.quiet, **polling},
            "runner": {
                "enabled": True,
                "device": "auto",
                "models_dir": str(REPO / "models"),
                **polling,
            },
            "routing": {
                "rules": [
                    {
                        "name": "ct-lung",
                        "match": {"series": {"Modality": {"equals": "CT"}}},
                        "pipeline": "ct-lung",
                        "destinations": ["pacs"],
                        "notify": ["ris"],
                    }
                ]
            },
            "destinations": {
                "pacs": {
                    "type": "dicom",
                    "ae_title": ORTHANC_AET,
                    "host": "127.0.0.1",
                    "port": self.pacs_port,
                },
                "ris": {
                    "type": "hl7",
                    "host": "127.0.0.1",
                    "port": self.ris_port,
                    "receiving_application": "RIS",
                    "timeout_seconds": 10,
                },
            },
            "export": dict(polling),
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": self.metrics_port},
            "logging": {"level": "WARNING"},
        }

    def launch(self) -> None:
        self.data.mkdir(parents=True)
        path = self.workdir / "node.yaml"
        path.write_text(yaml.safe_dump(self.config(), sort_keys=False), encoding="utf-8")
        argv = [sys.executable, "-m", "dicomnode", "serve", "-c", str(path)]
        self.proc = start(argv, self.log, self.workdir)
        wait_until(lambda: echo(NODE_AET, self.port), self.proc, "the node", self.log)
        # a node runs for days: its workers load the pipeline and warm up the result
        # writer once, at start; the first study after a start would wait for that
        wait_until(
            lambda: workers_warm(self.metrics_port), self.proc, "the node's workers", self.log
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self) -> str | None:
        """Stop the node; a message when it did not stop cleanly."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        status = stop(proc)
        if status != 0:
            return f"the node exited with {status} on SIGTERM:\n{tail(self.log)}"
        return None


# -- the job store, read only -------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    destination: str
    kind: str
    state: str
    attempts: int
    updated_at: float


@dataclass(frozen=True)
class Record:
    """What the node recorded about the study and its run."""

    last_instance_at: float
    instance_count: int
    round_at: dict[str, float]
    run_at: dict[str, float]
    run_attempts: int
    result_dir: Path
    deliveries: list[Delivery]


class JobStoreReader:
    """The node's SQLite job store, opened read-only (the node keeps writing it)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
        self.conn.row_factory = sqlite3.Row

    def run_job(self, study_uid: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT id, state, reason, attempts, result_dir, parent_id FROM jobs "
            "WHERE kind = 'run' AND study_instance_uid = ? ORDER BY id DESC LIMIT 1",
            (study_uid,),
        ).fetchone()
        return row

    def wait_done(self, study_uid: str, timeout: float, node: Node) -> None:
        """Until the study's run is DONE; fails when it is DEAD, the node exits, or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.run_job(study_uid)
            if row is not None and row["state"] == "DONE":
                return
            if row is not None and row["state"] == "DEAD":
                raise BenchError(f"the run is DEAD: {row['reason']}")
            if not node.alive():
                raise BenchError(f"the node exited:\n{tail(node.log)}")
            time.sleep(0.1)
        row = self.run_job(study_uid)
        where = "no run job" if row is None else f"the run is {row['state']} ({row['reason']})"
        raise BenchError(f"not DONE after {timeout:.0f} s: {where}")

    def transitions(self, job_id: int) -> dict[str, float]:
        """When the job entered each state (the latest time, should it have entered twice)."""
        rows = self.conn.execute(
            "SELECT to_state, at FROM transitions WHERE job_id = ? ORDER BY id", (job_id,)
        ).fetchall()
        return {row["to_state"]: float(row["at"]) for row in rows}

    def record(self, study_uid: str) -> Record:
        run = self.run_job(study_uid)
        if run is None or run["result_dir"] is None:
            raise BenchError("the run job or its result directory is missing")
        study = self.conn.execute(
            "SELECT last_instance_at, instance_count FROM jobs WHERE id = ?", (run["parent_id"],)
        ).fetchone()
        deliveries = [
            Delivery(r["destination"], r["kind"], r["state"], r["attempts"], r["updated_at"])
            for r in self.conn.execute(
                "SELECT destination, kind, state, attempts, updated_at FROM outbox "
                "WHERE job_id = ? ORDER BY id",
                (run["id"],),
            )
        ]
        return Record(
            last_instance_at=float(study["last_instance_at"]),
            instance_count=int(study["instance_count"]),
            round_at=self.transitions(int(run["parent_id"])),
            run_at=self.transitions(int(run["id"])),
            run_attempts=int(run["attempts"]),
            result_dir=Path(run["result_dir"]),
            deliveries=deliveries,
        )

    def close(self) -> None:
        self.conn.close()


# -- pushing and checking -----------------------------------------------------------------------


def push(files: Sequence[Path], port: int, log: Path) -> float:
    """Send ``files`` to the node with one storescu; seconds it took."""
    argv = ["storescu", "-aet", CALLING_AET, "-aec", NODE_AET, "127.0.0.1", str(port)]
    began = time.perf_counter()
    with log.open("wb") as out:
        code = subprocess.run(
            [*argv, *map(str, files)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=CHILD_ENV,
            check=False,
        ).returncode
    seconds = time.perf_counter() - began
    if code != 0:
        raise BenchError(f"storescu exited with {code}:\n{tail(log)}")
    return seconds


def check(record: Record, pacs: Orthanc, ris: RIS, study_uid: str, slices: int) -> list[str]:
    """What a user would check; one line per problem."""
    problems: list[str] = []
    if record.instance_count != slices:
        problems.append(f"the node recorded {record.instance_count} of {slices} instances")
    pending = [d for d in record.deliveries if d.state != "DELIVERED"]
    if pending:
        problems.append(f"{len(pending)} delivery row(s) not DELIVERED")
    retried = [d for d in record.deliveries if d.attempts != 1]
    if retried or record.run_attempts != 1:
        problems.append(
            f"retries happened (run attempts {record.run_attempts}, "
            f"{len(retried)} delivery row(s) with attempts != 1): the spans include them"
        )
    modalities = [str(s["MainDicomTags"].get("Modality", "")) for s in pacs.series_of(study_uid)]
    for modality in ("SEG", "SR"):
        if modalities.count(modality) != 1:
            problems.append(
                f"Orthanc has {modalities.count(modality)} {modality} series in the CT's study "
                f"(series there: {', '.join(modalities) or 'none'})"
            )
    pacs_rows = sum(1 for d in record.deliveries if d.destination == "pacs")
    stored = sum(len(s["Instances"]) for s in pacs.series_of(study_uid))
    if stored != pacs_rows:
        problems.append(f"Orthanc holds {stored} instances of the study, the node sent {pacs_rows}")
    messages = [m for m in ris.messages() if study_uid in m]
    if len(messages) != 1:
        problems.append(f"the RIS received {len(messages)} messages for the study, not one ORU^R01")
    else:
        try:
            kind = parse_message(messages[0].replace("\n", "\r")).msh.msh_9.to_er7()
        except HL7apyException as exc:
            kind = f"unparsable ({exc})"
        if kind != ORU_TYPE or study_uid not in messages[0]:
            problems.append(f"the RIS's message ({kind}) is not an ORU^R01 for the CT's study")
    return problems


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """One study's table and its overhead (seconds) next to the pipeline's compute."""

    rows: list[list[str]]
    overhead: float
    pipeline: float

    @property
    def share(self) -> float:
        return self.overhead / self.pipeline


def report(record: Record, quiet: float) -> Report:
    """The per-stage rows and the overhead."""
    timings: dict[str, float] = json.loads((record.result_dir / "result.json").read_text())[
        "timings"
    ]
    round_at, run_at = record.round_at, record.run_at
    pacs_done = max(d.updated_at for d in record.deliveries if d.destination == "pacs")
    ris_done = max(d.updated_at for d in record.deliveries if d.destination == "ris")
    exporting = run_at["EXPORTING"]
    pipeline = max(timings["pipeline_s"], 1e-6)
    worker = sum(
        timings.get(k, 0.0) for k in ("load_s", "pipeline_s", "save_s", "write_s", "describe_s")
    )
    total = run_at["DONE"] - record.last_instance_at
    waited = round_at["COMPLETE"] - record.last_instance_at

    def row(stage: str, span: str, seconds: float, note: str = "") -> list[str]:
        return [stage, span, f"{seconds:7.3f}", f"{100 * seconds / pipeline:6.1f} %", note]

    rows = [
        row(
            "quiet period",
            "last instance → COMPLETE",
            waited,
            f"configured {quiet:g} s, so {waited - quiet:+.3f} s of it is overhead",
        ),
        row("routing", "COMPLETE → ROUTED", round_at["ROUTED"] - round_at["COMPLETE"]),
        row("queue wait", "ROUTED → RUNNING", run_at["RUNNING"] - run_at["ROUTED"]),
        row("volume load", "result.json load_s", timings["load_s"]),
        row("pipeline", "result.json pipeline_s", pipeline),
        row("result save", "result.json save_s", timings["save_s"]),
        row("writing SEG/SR", "result.json write_s", timings["write_s"]),
        row(
            "descriptors",
            "result.json describe_s",
            timings.get("describe_s", 0.0),
            "drift monitoring (monitoring.enabled)",
        ),
        row(
            "runner, rest",
            "RUNNING → RESULTS_WRITTEN, rest",
            run_at["RESULTS_WRITTEN"] - run_at["RUNNING"] - worker,
            "hand-off, input checks, recording",
        ),
        row("export start", "RESULTS_WRITTEN → EXPORTING", exporting - run_at["RESULTS_WRITTEN"]),
        row("export to PACS", "EXPORTING → pacs rows DELIVERED", pacs_done - exporting),
        row(
            "HL7 to RIS",
            "EXPORTING → ris row DELIVERED",
            ris_done - exporting,
            f"after the PACS: ORU alone {ris_done - pacs_done:.3f} s",
        ),
        row("settle", "last DELIVERED → DONE", run_at["DONE"] - max(pacs_done, ris_done)),
        row("total", "last instance → DONE", total),
    ]
    return Report(rows, total - pipeline - quiet, pipeline)


def target_lines(reports: Sequence[Report]) -> list[str]:
    """Each study's overhead, and the median's against the targets."""
    ordered = sorted(reports, key=lambda r: r.share)
    median = ordered[len(ordered) // 2]
    each = ", ".join(f"{r.overhead:.3f} s = {100 * r.share:.1f} %" for r in reports)
    return [
        f"overhead of each study, in push order (everything except pipeline compute and the "
        f"configured quiet period): {each}",
        f"median overhead {median.overhead:.3f} s = {100 * median.share:.1f} % of pipeline "
        f"compute (target ≤ 30 %: {'met' if median.share <= 0.30 else 'not met'}); absolute "
        f"{median.overhead:.3f} s (target ≤ {OVERHEAD_TARGET_S:g} s: "
        f"{'met' if median.overhead <= OVERHEAD_TARGET_S else 'not met'})",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=256, help="slices in the series (256)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (512)")
    parser.add_argument("--quiet", type=float, default=2.0, help="assembly quiet_seconds (2)")
    parser.add_argument(
        "--studies",
        type=int,
        default=3,
        help="CTs pushed one after the other to the same node (3); the table is the study "
        "of median overhead",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for DONE (600)"
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=None,
        help="poll_seconds of assembly, runner and export (default: the node's defaults; "
        "stage hand-offs are signalled, polling is the fallback)",
    )
    args = parser.parse_args(argv)
    if args.slices < 1 or args.size < 16 or args.quiet <= 0 or args.timeout <= 0:
        parser.error("need --slices >= 1, --size >= 16, --quiet > 0, --timeout > 0")
    if args.studies < 1:
        parser.error("need --studies >= 1")
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install DCMTK (make peers)", file=sys.stderr)
            return 2
    if not os.access(ORTHANC, os.X_OK):
        print(f"{ORTHANC} not found: install Orthanc (make peers)", file=sys.stderr)
        return 2

    # SIGTERM (as from `timeout` or CI) unwinds like Ctrl-C, so the finally blocks stop the
    # peers (each in its own session, out of reach of the terminal) and remove the temp dir.
    signal.signal(signal.SIGTERM, on_sigterm)
    scratch = Path(tempfile.mkdtemp(prefix="dicomnode-bench-e2e-"))
    problems: list[str] = []
    pacs: Orthanc | None = None
    ris: RIS | None = None
    node: Node | None = None
    store: JobStoreReader | None = None
    reports: list[Report] = []
    device = ""
    megabytes = 0.0
    pushes: list[float] = []
    try:
        studies = [
            write_ct_series(
                scratch / f"series-{i}", slices=args.slices, rows=args.size, columns=args.size
            )
            for i in range(args.studies)
        ]
        megabytes = sum(path.stat().st_size for path in studies[0].paths) / 2**20
        (scratch / "orthanc").mkdir()
        (scratch / "node").mkdir()
        pacs = Orthanc(scratch / "orthanc")
        pacs.launch()
        ris = RIS()
        ris.launch()
        node = Node(scratch / "node", args.quiet, pacs.dicom_port, ris.port, args.poll)
        node.launch()
        store = JobStoreReader(node.data / "dicomnode.db")

        for series in studies:
            pushes.append(push(series.paths, node.port, scratch / "storescu.log"))
            store.wait_done(series.study_uid, args.timeout, node)
            record = store.record(series.study_uid)
            problems += check(record, pacs, ris, series.study_uid, args.slices)
            reports.append(report(record, args.quiet))
            device = json.loads((record.result_dir / "result.json").read_text())["device"]
    except (
        BenchError,
        OSError,
        sqlite3.Error,
        subprocess.SubprocessError,
        KeyError,
        ValueError,
    ) as exc:
        problems.insert(0, f"FAILED: {type(exc).__name__}: {exc}")
        reports = []
    finally:
        if store is not None:
            store.close()
        if node is not None:
            message = node.shutdown()
            if message:
                problems.append(message)
        if ris is not None:
            ris.shutdown()
        if pacs is not None:
            pacs.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)

    if not reports:
        print("\n".join(problems), file=sys.stderr)
        return 1
    median = sorted(reports, key=lambda r: r.share)[len(reports) // 2]
    pushed = statistics.median(pushes)
    print(
        f"machine: {os.cpu_count()} CPUs, pipeline on {device}; {len(reports)} series of "
        f"{args.slices} slices of {args.size}x{args.size} ({megabytes:.0f} MiB) one after the "
        f"other, each pushed by storescu in a median {pushed:.2f} s "
        f"({args.slices / pushed:.0f} images/s, before the table's spans); the table is study "
        f"{reports.index(median) + 1}, of median overhead"
    )
    print(table(["stage", "measured as", "seconds", "of pipeline", "note"], median.rows))
    print("\n".join(target_lines(reports)))
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print("- " + problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
