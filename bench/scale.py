"""Scale-out benchmark: studies per hour with one and with two Celery workers on this
machine, side by side, with the local executor (worker processes of the node) as reference;
with ``--ingest``, instead, images per second received with the job store on PostgreSQL
against the default SQLite file, side by side.

What it runs
------------
On loopback, each run with its own free ports and temporary directory: the node
(``python -m dicomnode serve``) with one rule, CT → ``--pipeline`` (default ``ct-lung``) and
no destination (a run is DONE once its SEG and SR are written), ``runner.device: cpu``,
one torch thread per worker process; for the Celery runs Debian's ``redis-server`` (no
persistence) as the broker and ``dicomnode worker`` processes (``runner.executor:
celery``). ``--studies`` synthetic CTs (``--slices`` of ``--size`` squared) are pushed with
DCMTK ``storescu`` over one association, so they complete and are routed together.

``--ingest``: the node as ``bench/ingest.py`` configures it (no routing rules and a
600-second assembly quiet time, so only receiving is measured: each instance fsynced into
the spool and recorded in the job store; ``--processes`` receiving processes, default 1)
receives ``--instances`` synthetic CT slices of 256x256 (128 KiB each) over one
association and over 4 parallel ones (``storescu`` processes started together, timed from
the start of the first to the exit of the last). Each measurement gets a freshly started
node: with the default SQLite store (a file in its data directory), then with PostgreSQL
(a fresh database, on one throwaway server started for the whole comparison from Debian's
binaries: initdb with trust authentication, 127.0.0.1 only, fsync on). The two alternate,
SQLite then PostgreSQL, for ``--rounds`` rounds (default 3), so both meet the same moments
of the machine's load; every measurement checks that each ``storescu`` exited 0 and that
the node spooled every instance.

How to read it
--------------
The span is taken from the job store: from the first run ROUTED to the last run DONE;
studies per hour = studies / span. The ratio of two Celery workers to one says how much a
second worker on the same machine adds (at most the number of free cores allows: on a
2-core machine shared with other work, well under 2). One run is one sample.

``--ingest``: images/s is instances divided by wall time, the ``storescu`` starts
included; higher is better. Each line of the table gives the median over the rounds for
each store, and PostgreSQL/SQLite is the ratio of the two medians: below 1.00x the node
received more slowly with PostgreSQL. The ratios of each round (measured a moment apart)
follow in brackets; their spread says how far the median can be trusted. The server runs
on the same machine and disk as the node, so the figures include its CPU and fsyncs but
not a network round trip; compare runs from the same machine only.

Run ``python bench/scale.py`` from the repository root; ``--help`` lists the flags.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from ingest import PARALLEL, SMALL_SIZE, Node, push, running
from peers import (
    CALLING_AET,
    BenchError,
    echo,
    free_port,
    on_sigterm,
    postgres,
    start,
    stop,
    table,
    tail,
)

from dicomnode.synthetic import write_ct_series

NODE_AET = "DICOMNODE"
REPO = Path(__file__).resolve().parent.parent


def node_config(
    work: Path, args: argparse.Namespace, executor: str, workers: int, broker: str
) -> dict[str, Any]:
    runner: dict[str, Any] = {
        "enabled": True,
        "device": "cpu",
        "threads": 1,
        "workers": workers if executor == "local" else 1,
        "poll_seconds": 0.1,
        "executor": executor,
    }
    if executor == "celery":
        runner["celery"] = {"broker": broker, "lease_seconds": 30}
    return {
        "node": {"ae_title": NODE_AET, "bind": "127.0.0.1", "port": free_port()},
        "ingress": {"allowed_senders": [{"ae_title": CALLING_AET}]},
        "storage": {"data_dir": str(work / "data"), "min_free_mb": 0},
        "assembly": {"quiet_seconds": 1.0, "poll_seconds": 0.1},
        "logging": {"level": "INFO"},
        "monitoring": {"enabled": False},
        "runner": runner,
        "routing": {
            "rules": [
                {
                    "name": "ct",
                    "match": {"series": {"Modality": {"equals": "CT"}}},
                    "pipeline": args.pipeline,
                }
            ]
        },
    }


def wait(ready: Any, what: str, timeout: float, procs: list[Any], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for proc in procs:
            if proc.poll() is not None:
                raise BenchError(f"{what}: a process exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not after {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.2)


def span(db: Path, studies: int) -> float | None:
    """Seconds from the first run ROUTED to the last run DONE, once all are DONE."""
    with sqlite3.connect(db) as conn:
        done = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE kind = 'run' AND state = 'DONE'"
        ).fetchone()[0]
        if done < studies:
            dead = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE kind = 'run' AND state = 'DEAD'"
            ).fetchone()[0]
            if dead:
                raise BenchError(f"{dead} run(s) DEAD")
            return None
        first, last = conn.execute(
            "SELECT MIN(CASE WHEN t.to_state = 'ROUTED' THEN t.at END), "
            "MAX(CASE WHEN t.to_state = 'DONE' THEN t.at END) "
            "FROM transitions t JOIN jobs j ON j.id = t.job_id WHERE j.kind = 'run'"
        ).fetchone()
    return float(last - first)


def one_run(args: argparse.Namespace, files: list[Path], executor: str, workers: int) -> float:
    """Seconds for the studies with this executor and number of workers."""
    procs = []
    with tempfile.TemporaryDirectory(prefix="dicomnode-scale-") as tmp:
        work = Path(tmp)
        try:
            broker = ""
            if executor == "celery":
                port = free_port()
                broker = f"redis://127.0.0.1:{port}/0"
                argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
                procs.append(start([*argv, "--save", "", "--dir", tmp], work / "redis.log", work))
            config = node_config(work, args, executor, workers, broker)
            path = work / "node.yaml"
            path.write_text(yaml.safe_dump(config))
            node_log = work / "node.log"
            serve = [sys.executable, "-m", "dicomnode", "serve", "-c", str(path)]
            node = start(serve, node_log, REPO)
            procs.append(node)
            port = config["node"]["port"]
            wait(lambda: echo(NODE_AET, port), "the node", 120, [node], node_log)
            if executor == "celery":
                for index in range(workers):
                    log = work / f"w{index}.log"
                    argv = [sys.executable, "-m", "dicomnode", "worker", "-c", str(path)]
                    proc = start(
                        [*argv, "--pipelines", args.pipeline, "--name", f"w{index}"], log, REPO
                    )
                    procs.append(proc)
                    ready = f"worker w{index} ready"
                    wait(
                        lambda log=log, ready=ready: ready in log.read_text(),
                        "a worker",
                        120,
                        [proc],
                        log,
                    )
            else:
                wait(lambda: "runner:" in node_log.read_text(), "the runner", 120, [node], node_log)
            push = start(
                ["storescu", "-aet", CALLING_AET, "-aec", NODE_AET, "127.0.0.1", str(port)]
                + [str(f) for f in files],
                work / "storescu.log",
                REPO,
            )
            if push.wait(timeout=600) != 0:
                raise BenchError(f"storescu failed:\n{tail(work / 'storescu.log')}")
            db = work / "data" / "dicomnode.db"
            result: list[float] = []

            def finished() -> bool:
                value = span(db, args.studies)
                if value is not None:
                    result.append(value)
                return value is not None

            wait(finished, "every run DONE", args.timeout, [node], node_log)
            return result[0]
        finally:
            for proc in reversed(procs):
                stop(proc, group=True)


def ingest_comparison(args: argparse.Namespace) -> int:
    """Images/s received with the SQLite store and with PostgreSQL, over 1 and ``PARALLEL``
    associations, alternating for ``args.rounds`` rounds; prints the runs and the table."""
    stores = ("SQLite", "PostgreSQL")
    counts = (1, PARALLEL)
    rates: dict[tuple[str, int], list[float]] = {(s, n): [] for s in stores for n in counts}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dicomnode-scale-ingest-") as tmp, postgres() as pg:
        scratch = Path(tmp)
        files = write_ct_series(
            scratch / "series", slices=args.instances, rows=SMALL_SIZE, columns=SMALL_SIZE
        ).paths
        runs = 0
        for round_ in range(1, args.rounds + 1):
            for associations in counts:
                for store in stores:
                    runs += 1
                    url = pg.create_database(f"node{runs}") if store == "PostgreSQL" else None
                    node = Node(args.processes, database_url=url)
                    workdir = scratch / f"node{runs}"
                    workdir.mkdir()
                    try:
                        with running(node, workdir, problems):
                            seconds = push(node, files, associations)
                    except BenchError as exc:
                        raise BenchError(
                            f"{store}: {exc}\nthe node's log:\n{tail(node.log)}"
                        ) from exc
                    finally:
                        shutil.rmtree(workdir, ignore_errors=True)
                    rate = len(files) / seconds
                    rates[store, associations].append(rate)
                    print(
                        f"round {round_}/{args.rounds}  {store:<10} {associations} assoc: "
                        f"{seconds:6.2f} s  {rate:7.1f} images/s",
                        flush=True,
                    )
    rows = []
    for associations in counts:
        sqlite_rates, pg_rates = rates["SQLite", associations], rates["PostgreSQL", associations]
        median_sqlite, median_pg = statistics.median(sqlite_rates), statistics.median(pg_rates)
        each = " ".join(f"{p / q:.2f}" for p, q in zip(pg_rates, sqlite_rates, strict=True))
        rows.append(
            [
                str(associations),
                f"{median_sqlite:.1f}",
                f"{median_pg:.1f}",
                f"{median_pg / median_sqlite:.2f}x ({each})",
            ]
        )
    print()
    print(
        f"machine: {os.cpu_count()} CPUs; {len(files)} instances of {SMALL_SIZE}x{SMALL_SIZE}; "
        f"ingress.processes {args.processes}; median of {args.rounds} round(s)"
    )
    print(
        table(
            ["associations", "SQLite images/s", "PostgreSQL images/s", "PostgreSQL/SQLite"],
            rows,
        )
    )
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print("- " + problem, file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pipeline", default="ct-lung")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--ingest",
        action="store_true",
        help="instead of the executors: ingest with the job store on PostgreSQL vs SQLite",
    )
    parser.add_argument(
        "--instances", type=int, default=1000, help="--ingest: instances per push (1000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="--ingest: rounds (3)")
    parser.add_argument(
        "--processes", type=int, default=1, help="--ingest: the node's ingress.processes (1)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    if args.ingest:
        if args.instances < PARALLEL or args.rounds < 1 or args.processes < 1:
            parser.error(f"need --instances >= {PARALLEL}, --rounds >= 1, --processes >= 1")
        return ingest_comparison(args)
    with tempfile.TemporaryDirectory(prefix="dicomnode-scale-data-") as tmp:
        files = []
        for index in range(args.studies):
            series = write_ct_series(
                Path(tmp) / f"ct{index}", slices=args.slices, rows=args.size, columns=args.size
            )
            files += series.paths
        rows = []
        rates = {}
        for label, executor, workers in (
            ("local, 1 worker process", "local", 1),
            ("celery, 1 worker", "celery", 1),
            ("celery, 2 workers", "celery", 2),
        ):
            seconds = one_run(args, files, executor, workers)
            rates[label] = args.studies / seconds * 3600
            print(f"{label}: {args.studies} studies in {seconds:.1f} s", flush=True)
            rows.append([label, f"{seconds:.1f}", f"{rates[label]:.0f}"])
    print()
    print(table(["executor", "seconds", "studies/hour"], rows))
    ratio = rates["celery, 2 workers"] / rates["celery, 1 worker"]
    print(f"\ntwo Celery workers / one: {ratio:.2f}x (this machine: see nproc; one sample)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
