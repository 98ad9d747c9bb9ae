"""Large C-STORE benchmark: the receiving node's peak memory for one big instance.

What it measures
----------------
One CT instance whose Pixel Data is ``--mib`` MiB (default 256; Explicit VR Little Endian)
is pushed once with DCMTK ``storescu`` over loopback to a freshly started node
(``python -m dicomnode serve``, one receiving process). The node's peak resident memory
(``VmHWM`` in ``/proc/<pid>/status``) is read after one C-ECHO (the baseline: the node
started and answering) and again after the C-STORE was answered Success and the file is in
the spool. The difference is what receiving that instance cost in memory.

With ``--before REV`` the same push also goes to the node as it was at git revision ``REV``
(extracted with ``git archive`` into a temporary folder and run from there), and the two
are printed side by side with their ratio; a ratio below 1.00x means this tree needs less.

Run ``python bench/large_store.py --before <rev>`` from the repository root; ``--help``
lists the flags. It needs DCMTK and twice ``--mib`` of free disk for the file and the spool.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from peers import CALLING_AET, BenchError, echo, free_port, on_sigterm, stop, table, tail

from dicomnode.synthetic import write_ct_series

ROOT = Path(__file__).resolve().parent.parent
AET = "DICOMNODE"
READY_TIMEOUT = 60.0


def big_instance(folder: Path, mib: int) -> Path:
    """A one-slice CT whose 16-bit Pixel Data is ``mib`` MiB (a square or near-square)."""
    series = write_ct_series(folder / "seed", slices=1, rows=16, columns=16)
    ds = pydicom.dcmread(series.paths[0])
    pixels = mib * 1024 * 1024 // 2
    columns = 8192
    rows = pixels // columns
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = bytes(rows * columns * 2)
    path = folder / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM for process {pid}")


def measure(source: Path, instance: Path, workdir: Path) -> tuple[float, float]:
    """Start the node from ``source``, push ``instance``; peak RSS (MiB) before and after."""
    workdir.mkdir(parents=True)
    port = free_port()
    data = workdir / "data"
    config = workdir / "node.yaml"
    config.write_text(
        f"node: {{ae_title: {AET}, bind: 127.0.0.1, port: {port}}}\n"
        "ingress: {allow_any: true, max_pdu_size: 262144}\n"
        f"storage: {{data_dir: '{data}', min_free_mb: 0}}\n"
        "assembly: {quiet_seconds: 600, max_wait_seconds: 3600}\n"
        "runner: {enabled: false}\n"
        "logging: {level: WARNING}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(source), "TMPDIR": str(workdir)}
    log = workdir / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode", "serve", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not echo(AET, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the node from {source} did not start:\n{tail(log)}")
            time.sleep(0.2)
        baseline = peak_rss_mib(proc.pid)
        result = subprocess.run(
            ["storescu", "-aet", CALLING_AET, "-aec", AET, "127.0.0.1", str(port), str(instance)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"storescu failed:\n{result.stdout}{result.stderr}")
        stored = list((data / "spool" / "studies").rglob("*.dcm"))
        if len(stored) != 1 or stored[0].stat().st_size < instance.stat().st_size - 4096:
            raise BenchError(f"the node from {source} did not store the instance:\n{tail(log)}")
        return baseline, peak_rss_mib(proc.pid)
    finally:
        stop(proc, group=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="Pixel Data size in MiB")
    parser.add_argument("--before", metavar="REV", help="also measure the node at git REV")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        folder = Path(tmp)
        instance = big_instance(folder, args.mib)
        trees: list[tuple[str, Path]] = []
        if args.before:
            old = folder / "before"
            old.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.before], capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            trees.append((f"at {args.before}", old))
        trees.append(("this tree", ROOT))
        rows = []
        growth: list[float] = []
        for name, source in trees:
            baseline, peak = measure(source, instance, folder / name.replace(" ", "-"))
            growth.append(peak - baseline)
            rows.append([name, f"{baseline:.0f}", f"{peak:.0f}", f"{peak - baseline:.0f}"])
        size = instance.stat().st_size / 1024 / 1024
        print(f"one C-STORE of {size:.0f} MiB, node peak RSS in MiB (VmHWM)")
        print(table(["node", "started", "after the C-STORE", "growth"], rows))
        if len(rows) == 2:
            (before_peak, after_peak) = (float(rows[0][2]), float(rows[1][2]))
            (before, after) = growth
            print(
                f"this tree / {args.before}: peak {after_peak / before_peak:.2f}x, "
                f"growth {after:.0f} MiB against {before:.0f} MiB"
            )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
