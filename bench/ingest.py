"""Ingest benchmark: how fast the node receives a CT series, against Orthanc and DCMTK storescp.

What it measures
----------------
A synthetic CT series (default 256 slices of 512x512, Explicit VR Little Endian, about
512 KiB a file) is pushed with DCMTK ``storescu`` over loopback to each receiver:

* ``storescp`` (DCMTK, ``--fork``), with its default PDU size and with ``--max-pdu 131072``.
  It writes files without fsync and records nothing: the native ceiling of this machine.
* Orthanc, with ``SyncStorageArea`` (fsync, as the node does) and 4 DICOM threads.
* the node (``python -m dicomnode serve``) with ``ingress.processes`` 1 and 4, measured once
  its pipeline worker is warm (``dicomnode_runner_workers``): the worker's start-up takes
  both cores for seconds, which a node that runs for days has long done.

Each receiver gets the whole series once over one association (one ``storescu`` with every
file) and once over 4 parallel associations (4 ``storescu`` processes started together, each
with a quarter of the files; timed from the start of the first to the exit of the last).
Then ``MANY`` (25) ``storescu`` processes start together, each sending 40 small instances
(256x256, 128 KiB): many senders at once, as a busy department looks.
Every measurement uses a freshly started receiver with an empty storage directory, checks
that every ``storescu`` exited 0 and that the receiver stored every instance, and counts
the time ``storescu`` needs, process start included. ``--repeat K`` keeps the best of K.
Then every receiver, freshly started again, all at once, answers 40 rounds of ``echoscu``
runs, one run against each receiver in turn (so all meet the same moments of the machine's
load; the median is kept): the milliseconds one short association costs (connect,
negotiate, one C-ECHO, release, the tool's own start included), which is what a sender
opening an association per instance pays for every image. Last, the node with one
receiving process is started once more and receives 2,000 small instances over 4
associations: the resident memory of its receiving process before and after is printed,
and a growth above 100 MiB is a failed check.

How to read the figures
-----------------------
Images/s is slices divided by wall time; higher is better. storescp is the ceiling: what
the sender, loopback and the disk allow when the receiver does nearly nothing. The node's
ratios to Orthanc (an fsyncing PACS) and to storescp are printed at the end; a ratio above
1.00x means the node was faster; the storescp ratios use its faster configuration. The
receivers do not get the same PDU size: storescp 16384 or 131072, Orthanc its default
(16384), the node 262144. At the default size one measurement lasts about a second, so a
single run is noisy: ``--repeat 3`` steadies it. The figures depend on the machine (its CPU
count is printed with them), on what else runs on it, and on the page cache; compare runs
from the same machine only.
A failed check is printed under the table and makes the exit status 1.

Run ``python bench/ingest.py`` from the repository root (``make bench``); ``--help`` lists
the flags.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from peers import (
    CALLING_AET,
    CHILD_ENV,
    ORTHANC,
    STOP_TIMEOUT,
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

READY_TIMEOUT = 30.0
PARALLEL = 4
MANY = 25  # a busy department: many senders of small instances at once
MANY_EACH = 40  # instances per sender in the MANY column
SMALL_SIZE = 256  # 256 x 256 x 16 bit: 128 KiB of pixel data an instance
MEMORY_PUSH = 2000  # instances pushed to one receiving node while its RSS is watched
MEMORY_LIMIT_MB = 100.0
ECHOES = 40  # associations timed one after another, each with one C-ECHO


def http_ok(url: str) -> bool:
    """Whether a GET of ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def rss_mib(pid: int) -> float:
    """Resident memory (MiB) of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise BenchError(f"no VmRSS for process {pid}")


# -- receivers ----------------------------------------------------------------------------------


class Receiver(ABC):
    """A receiver configuration; :meth:`launch` starts a fresh instance of it in a work
    directory, with empty storage and new ports, and :meth:`shutdown` stops it."""

    name: ClassVar[str]
    aet: ClassVar[str]
    # storescp's forked children outlive their parent: SIGTERM the whole process group.
    kill_group: ClassVar[bool] = False

    def __init__(self, config: str) -> None:
        self.config = config
        self.port = 0
        self.workdir = Path()
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_status: int | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "receiver.log"

    def launch(self, workdir: Path) -> None:
        """Start an instance in ``workdir`` and wait until it answers C-ECHO."""
        self.workdir = workdir
        self.port = free_port()
        self.exit_status = None
        self.proc = start(self.argv(), self.log, workdir)
        self.wait_ready()

    @abstractmethod
    def argv(self) -> list[str]:
        """Prepare the work directory (storage, config file); the command that starts it."""

    @abstractmethod
    def stored(self) -> int:
        """How many instances the running instance holds."""

    def ready(self) -> bool:
        return echo(self.aet, self.port)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} ({self.config}) exited with {self.proc.returncode} "
                    f"before it was ready:\n{tail(self.log)}"
                )
            if self.ready():
                return
            time.sleep(0.2)
        raise BenchError(
            f"{self.name} ({self.config}) not ready after {READY_TIMEOUT:.0f} s:\n{tail(self.log)}"
        )

    def shutdown(self) -> str | None:
        """Stop the instance; a message when it did not stop cleanly."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        self.exit_status = stop(proc, group=self.kill_group)
        if self.exit_status is None:
            return f"{self.name} ({self.config}) ignored SIGTERM for {STOP_TIMEOUT:.0f} s"
        return None


class StoreSCP(Receiver):
    """DCMTK storescp, one forked process per association, files written without fsync."""

    name = "storescp"
    aet = "STORESCP"
    kill_group = True

    def __init__(self, max_pdu: int | None = None) -> None:
        super().__init__("--fork" + (f" --max-pdu {max_pdu}" if max_pdu else " (PDU 16384)"))
        self.max_pdu = max_pdu

    def argv(self) -> list[str]:
        (self.workdir / "out").mkdir()
        argv = ["storescp", "--fork", "-od", str(self.workdir / "out"), "-aet", self.aet]
        if self.max_pdu:
            argv += ["--max-pdu", str(self.max_pdu)]
        return [*argv, str(self.port)]

    def stored(self) -> int:
        return sum(1 for path in (self.workdir / "out").iterdir() if path.is_file())


class Orthanc(Receiver):
    """Orthanc with SyncStorageArea (fsync, as the node does) and 4 DICOM threads."""

    name = "Orthanc"
    aet = "ORTHANC"

    def __init__(self) -> None:
        super().__init__("sync, 4 threads")
        self.http_port = 0

    def argv(self) -> list[str]:
        self.http_port = free_port()
        storage = self.workdir / "storage"
        storage.mkdir()
        config = {
            "Name": "bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SyncStorageArea": True,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "DicomAlwaysAllowStore": True,
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "DicomThreadsCount": 4,
            "TcpNoDelay": True,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return [ORTHANC, str(path)]

    def ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.http_port}/system") and super().ready()

    def stored(self) -> int:
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(json.load(response)["CountInstances"])


class Node(Receiver):
    """The node, ``python -m dicomnode serve`` with ``ingress.processes`` receiving processes;
    its job store is the SQLite file under its data directory, or the database
    ``database_url`` names (set it before each launch: every instance needs an empty one)."""

    name = "node"
    aet = "DICOMNODE"

    def __init__(self, processes: int, database_url: str | None = None) -> None:
        super().__init__(f"processes={processes}")
        self.processes = processes
        self.database_url = database_url
        self.metrics_port = 0

    def ready(self) -> bool:
        # the runner's worker imports torch and warms up its result writer as the node
        # starts, which takes both cores for seconds: a node that runs for days has
        # done that long before a study comes, so the push waits for it too
        return super().ready() and workers_warm(self.metrics_port)

    def argv(self) -> list[str]:
        self.metrics_port = free_port()
        data = self.workdir / "data"
        data.mkdir()
        config = self.workdir / "node.yaml"
        config.write_text(
            f"node: {{ae_title: {self.aet}, bind: 127.0.0.1, port: {self.port}}}\n"
            f"ingress: {{allow_any: true, processes: {self.processes}, max_pdu_size: 262144, "
            # every sender of the benchmark is on loopback, one address; a department's
            # senders are separate hosts, each under the per-address cap (default 8)
            "max_connections_per_address: 32}\n"
            f"storage: {{data_dir: {json.dumps(str(data))}, min_free_mb: 0}}\n"
            "assembly: {quiet_seconds: 600, max_wait_seconds: 3600}\n"
            f"metrics: {{enabled: true, host: 127.0.0.1, port: {self.metrics_port}}}\n"
            "logging: {level: WARNING}\n"
            + (f"database: {{url: {json.dumps(self.database_url)}}}\n" if self.database_url else "")
        )
        return [sys.executable, "-m", "dicomnode", "serve", "-c", str(config)]

    def stored(self) -> int:
        """Files in the spool: the node keeps one per SOP Instance UID."""
        studies = self.workdir / "data" / "spool" / "studies"
        return sum(1 for _ in studies.rglob("*.dcm")) if studies.is_dir() else 0

    def shutdown(self) -> str | None:
        message = super().shutdown()
        if message is None and self.exit_status not in (None, 0):
            message = f"node ({self.config}) exited with {self.exit_status} on SIGTERM:\n"
            message += tail(self.log)
        return message


# -- pushing ------------------------------------------------------------------------------------


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """``files`` in ``parts`` contiguous chunks of (nearly) equal size."""
    n = len(files)
    return [list(files[i * n // parts : (i + 1) * n // parts]) for i in range(parts)]


def push(receiver: Receiver, files: Sequence[Path], associations: int) -> float:
    """Send ``files`` over ``associations`` parallel storescu runs; seconds from first start
    to last exit. Raises when a storescu fails or the receiver did not store every file."""
    chunks = [chunk for chunk in split(files, associations) if chunk]
    logs = [receiver.workdir / f"storescu-{associations}-{i}.log" for i in range(len(chunks))]
    handles = [log.open("wb") for log in logs]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        began = time.perf_counter()
        for chunk, out in zip(chunks, handles, strict=True):
            argv = ["storescu", "-aet", CALLING_AET, "-aec", receiver.aet]
            argv += ["127.0.0.1", str(receiver.port), *map(str, chunk)]
            procs.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=CHILD_ENV,
                )
            )
        codes = [proc.wait() for proc in procs]
        seconds = time.perf_counter() - began
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for out in handles:
            out.close()
    label = f"{receiver.name} ({receiver.config}), {associations} association(s)"
    for code, log in zip(codes, logs, strict=True):
        if code != 0:
            raise BenchError(f"{label}: storescu exited with {code}:\n{tail(log)}")
    stored = receiver.stored()
    if stored != len(files):
        # Tell "lost" from "acknowledged before it was stored": look again a little later.
        time.sleep(5)
        later = receiver.stored()
        raise BenchError(
            f"{label}: {stored} of {len(files)} instances stored when storescu returned "
            f"({later} five seconds later):\n{tail(receiver.log)}"
        )
    return seconds


def echo_once(receiver: Receiver) -> float:
    """Milliseconds of one ``echoscu`` run: connect, negotiate, one C-ECHO, release, the
    tool's own start included."""
    argv = ["echoscu", "-aet", CALLING_AET, "-aec", receiver.aet, "127.0.0.1", str(receiver.port)]
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=CHILD_ENV, check=False)
    elapsed = (time.perf_counter() - began) * 1000.0
    if done.returncode != 0:
        raise BenchError(
            f"{receiver.name} ({receiver.config}): echoscu exited with "
            f"{done.returncode}:\n{done.stderr.decode(errors='replace')}"
        )
    return elapsed


def measure_echoes(
    measured: Sequence[tuple[Receiver, Row]], scratch: Path, problems: list[str]
) -> None:
    """Start a fresh instance of every receiver, then time ``ECHOES`` rounds of one
    ``echoscu`` run against each in turn, so that every receiver meets the same moments
    of the machine's load; each row gets the median milliseconds."""
    with ExitStack() as stack:
        try:
            for receiver, _ in measured:
                workdir = Path(tempfile.mkdtemp(prefix=f"{receiver.name}-echo-", dir=scratch))
                stack.callback(shutil.rmtree, workdir, ignore_errors=True)
                stack.enter_context(running(receiver, workdir, problems))
            times: list[list[float]] = [[] for _ in measured]
            for _ in range(ECHOES):
                for (receiver, _), series in zip(measured, times, strict=True):
                    series.append(echo_once(receiver))
        except (BenchError, OSError, subprocess.SubprocessError, ValueError) as exc:
            problems.append(str(exc))
            print("  echoscu rounds: FAILED", flush=True)
            return
    for (_, row), series in zip(measured, times, strict=True):
        row.echo_ms = statistics.median(series)
        print(
            f"  {row.name:<8} {row.config:<24} {ECHOES} echoscu runs (interleaved): "
            f"median {row.echo_ms:.1f} ms",
            flush=True,
        )


@dataclass
class Row:
    """Best images/s per association count for one receiver configuration, and the
    milliseconds one short association (a C-ECHO) costs."""

    name: str
    config: str
    rates: dict[int, float] = field(default_factory=dict)
    echo_ms: float | None = None
    memory: tuple[float, float] | None = None  # RSS MiB before and after MEMORY_PUSH instances


@contextmanager
def running(receiver: Receiver, workdir: Path, problems: list[str]) -> Iterator[Receiver]:
    """A fresh instance of the receiver in ``workdir``; stopped (and an unclean stop noted)
    on the way out."""
    try:
        receiver.launch(workdir)
        yield receiver
    finally:
        message = receiver.shutdown()
        if message:
            problems.append(message)


def measure(
    receiver: Receiver,
    files: Sequence[Path],
    small: Sequence[Path],
    scratch: Path,
    repeat: int,
    problems: list[str],
) -> Row:
    """Push the series to fresh instances of the receiver over 1 and 4 associations, and
    ``MANY`` x ``MANY_EACH`` small instances over ``MANY`` associations, ``repeat`` times
    each, and keep the best rate. Failures go to ``problems``."""
    row = Row(receiver.name, receiver.config)
    cases = [(1, files), (PARALLEL, files), (MANY, small[: MANY * MANY_EACH])]
    for associations, batch in cases:
        for attempt in range(repeat):
            workdir = Path(tempfile.mkdtemp(prefix=f"{receiver.name}-", dir=scratch))
            try:
                with running(receiver, workdir, problems):
                    seconds = push(receiver, batch, associations)
                rate = len(batch) / seconds
                row.rates[associations] = max(rate, row.rates.get(associations, 0.0))
                print(
                    f"  {row.name:<8} {row.config:<24} {associations} assoc "
                    f"run {attempt + 1}/{repeat}: {seconds:6.2f} s  {rate:7.1f} images/s",
                    flush=True,
                )
            except (BenchError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                problems.append(str(exc))
                print(f"  {row.name} ({row.config}), {associations} assoc: FAILED", flush=True)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    return row


def measure_memory(receiver: Node, small: Sequence[Path], scratch: Path, row: Row) -> str | None:
    """The receiving process's resident memory (with one receiving process, the node's main
    process: the listener and the stages; not the pipeline workers, which load their models
    and warm up at start whatever is received) after start and after receiving
    ``MEMORY_PUSH`` instances over ``PARALLEL`` associations; a problem when it grew by more
    than ``MEMORY_LIMIT_MB``."""
    workdir = Path(tempfile.mkdtemp(prefix="node-memory-", dir=scratch))
    problems: list[str] = []
    try:
        with running(receiver, workdir, problems):
            assert receiver.proc is not None
            before = rss_mib(receiver.proc.pid)
            push(receiver, small[:MEMORY_PUSH], PARALLEL)
            after = rss_mib(receiver.proc.pid)
        row.memory = (before, after)
        print(
            f"  {row.name:<8} {row.config:<24} RSS {before:.0f} MiB -> {after:.0f} MiB "
            f"after {MEMORY_PUSH} instances",
            flush=True,
        )
        if after - before > MEMORY_LIMIT_MB:
            problems.append(
                f"node ({receiver.config}): RSS grew by {after - before:.0f} MiB over "
                f"{MEMORY_PUSH} instances (limit {MEMORY_LIMIT_MB:.0f})"
            )
    except (BenchError, OSError, subprocess.SubprocessError, ValueError) as exc:
        problems.append(str(exc))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return "; ".join(problems) or None


# -- report -------------------------------------------------------------------------------------


def fmt_rate(row: Row, associations: int) -> str:
    rate = row.rates.get(associations)
    return f"{rate:.1f}" if rate is not None else "FAILED"


def ratios(nodes: Sequence[Row], orthanc: Row, storescp: Sequence[Row]) -> list[str]:
    """Lines like ``node(4 proc)/Orthanc over 4 assoc: 1.12x``."""
    lines: list[str] = []
    for node in nodes:
        who = f"node({node.config.removeprefix('processes=')} proc)"
        for associations in (1, PARALLEL, MANY):
            rate = node.rates.get(associations)
            ceiling = max((r.rates.get(associations, 0.0) for r in storescp), default=0.0)
            for other, base in (
                ("Orthanc", orthanc.rates.get(associations)),
                ("storescp", ceiling),
            ):
                value = f"{rate / base:.2f}x" if rate and base else "n/a"
                lines.append(f"{who}/{other} over {associations} assoc: {value}")
    for node in nodes:
        who = f"node({node.config.removeprefix('processes=')} proc)"
        value = (
            f"{orthanc.echo_ms / node.echo_ms:.2f}x" if node.echo_ms and orthanc.echo_ms else "n/a"
        )
        lines.append(f"{who}/Orthanc, C-ECHO associations per second: {value}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=256, help="slices in the series (256)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (512)")
    parser.add_argument("--repeat", type=int, default=1, help="keep the best of K runs (1)")
    parser.add_argument(
        "--receivers",
        default="storescp,orthanc,node",
        help="which to measure, comma-separated: storescp, orthanc, node, node1 (the node "
        "with one receiving process only); default storescp,orthanc,node",
    )
    args = parser.parse_args(argv)
    wanted = {name.strip() for name in args.receivers.split(",") if name.strip()}
    unknown = wanted - {"storescp", "orthanc", "node", "node1"}
    if unknown:
        parser.error(f"--receivers: unknown {', '.join(sorted(unknown))}")
    if args.slices < PARALLEL or args.size < 1 or args.repeat < 1:
        parser.error(f"need --slices >= {PARALLEL}, --size >= 1, --repeat >= 1")
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install DCMTK (make peers)", file=sys.stderr)
            return 2
    if not os.access(ORTHANC, os.X_OK):
        print(f"{ORTHANC} not found: install Orthanc (make peers)", file=sys.stderr)
        return 2

    # SIGTERM (as from `timeout` or CI) unwinds like Ctrl-C, so the finally blocks stop the
    # receivers (each in its own session, out of reach of the terminal) and remove temp dirs.
    signal.signal(signal.SIGTERM, on_sigterm)
    scratch = Path(tempfile.mkdtemp(prefix="dicomnode-bench-"))
    problems: list[str] = []
    try:
        began = time.perf_counter()
        series = write_ct_series(
            scratch / "series", slices=args.slices, rows=args.size, columns=args.size
        )
        files = series.paths
        megabytes = sum(path.stat().st_size for path in files) / 2**20
        print(
            f"series: {len(files)} slices of {args.size}x{args.size}, {megabytes:.0f} MiB, "
            f"written in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        began = time.perf_counter()
        small = write_ct_series(
            scratch / "small", slices=MEMORY_PUSH, rows=SMALL_SIZE, columns=SMALL_SIZE
        ).paths
        print(
            f"small instances: {len(small)} of {SMALL_SIZE}x{SMALL_SIZE} "
            f"({small[0].stat().st_size / 1024:.0f} KiB), written in "
            f"{time.perf_counter() - began:.1f} s",
            flush=True,
        )

        scp_receivers: list[Receiver] = (
            [StoreSCP(), StoreSCP(max_pdu=131072)] if "storescp" in wanted else []
        )
        processes = [1, 4] if "node" in wanted else [1] if "node1" in wanted else []
        node_receivers: list[Receiver] = [Node(processes=p) for p in processes]
        # measured in turn: the node's and Orthanc's figures of one run come from one sitting
        receivers = [*scp_receivers, *([Orthanc()] if "orthanc" in wanted else [])]
        receivers += node_receivers
        rows = [measure(r, files, small, scratch, args.repeat, problems) for r in receivers]
        measure_echoes(list(zip(receivers, rows, strict=True)), scratch, problems)
        for receiver, row in zip(receivers, rows, strict=True):
            if isinstance(receiver, Node) and receiver.processes == 1:
                problem = measure_memory(receiver, small, scratch, row)
                if problem:
                    problems.append(problem)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    scp_rows = [r for r in rows if r.name == "storescp"]
    node_rows = [r for r in rows if r.name == "node"]
    orthanc_row = next((r for r in rows if r.name == "Orthanc"), Row("Orthanc", "not run"))
    print()
    print(
        f"machine: {os.cpu_count()} CPUs; series: {len(files)} slices of "
        f"{args.size}x{args.size} ({megabytes:.0f} MiB); best of {args.repeat}"
    )
    print(
        table(
            [
                "receiver",
                "config",
                "1 assoc images/s",
                f"{PARALLEL} assoc images/s",
                f"{MANY}x{MANY_EACH} small images/s",
                "ms per C-ECHO assoc",
                f"RSS MiB before/after {MEMORY_PUSH}",
            ],
            [
                [
                    r.name,
                    r.config,
                    fmt_rate(r, 1),
                    fmt_rate(r, PARALLEL),
                    fmt_rate(r, MANY),
                    "FAILED" if r.echo_ms is None else f"{r.echo_ms:.1f}",
                    "" if r.memory is None else f"{r.memory[0]:.0f} -> {r.memory[1]:.0f}",
                ]
                for r in rows
            ],
        )
    )
    print()
    print("Ratios to storescp use its faster configuration in each column.")
    for line in ratios(node_rows, orthanc_row, scp_rows):
        print(line)
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print("- " + problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
