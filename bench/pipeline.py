"""Pipeline benchmark: where the time of a ``ct-lung`` run goes.

For a synthetic chest CT (default 256 slices of 512x512, the phantom of
``dicomnode.synthetic``) it measures, each in a fresh process so that peak
memory is the stage's own:

* **load**: ``load_series`` reading the DICOM files into a volume;
* **node path**: load + ``run`` exactly as a worker does (``Worker.run``: load,
  pipeline, result saved to disk);
* **bare tensor**: the same pipeline's ``run`` on the same voxels built in memory,
  with no DICOM reading or result writing.

The ratio node path / bare tensor shows what loading and saving add to the
pipeline itself. Peak memory is the process's maximum resident set size.
Run ``python bench/pipeline.py`` from the repository root; ``--help`` for flags.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PIPELINE = "ct-lung"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _device(name: str) -> str:
    """``auto`` is CUDA when there is a device, else the CPU (as ``runner.device: auto``)."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def measure(mode: str, folder: Path, out: Path, threads: int, device: str) -> dict[str, float]:
    """Run one measurement in this process; return its figures.

    On CUDA the pipeline runs once untimed first (a worker keeps its pipeline warm, so the
    first call's kernel selection and allocations are not part of a study's turnaround).
    """
    import torch

    from dicomnode.protocol import SliceSource, Volume
    from dicomnode.runner.registry import PipelineRegistry
    from dicomnode.runner.volume import load_series
    from dicomnode.runner.worker import Task, Worker, WorkerSettings

    torch.set_num_threads(threads)
    files = _files(folder)
    if mode == "load":
        start = time.perf_counter()
        volume = load_series(files)
        return {"seconds": time.perf_counter() - start, "voxels": float(volume.array.size)}
    if mode == "node":
        worker = Worker(WorkerSettings(device, threads, (), "models"))
        worker.pipeline(PIPELINE)  # loaded once per worker, as in the node
        if device != "cpu":
            worker.run(Task(0, PIPELINE, tuple(map(str, files)), str(out / "warm-up")))
        start = time.perf_counter()
        outcome = worker.run(Task(0, PIPELINE, tuple(map(str, files)), str(out)))
        if not outcome.ok:
            raise SystemExit(f"{PIPELINE} failed: {outcome.summary}")
        return {"seconds": time.perf_counter() - start}
    # bare: the same voxels and geometry, built without reading DICOM
    template = load_series(files[:2])
    from dicomnode.synthetic import Phantom, phantom_slice

    slices, rows = len(files), template.array.shape[1]
    spacing = template.spacing
    z_center = (slices - 1) * spacing[0] / 2.0
    array = np.stack(
        [
            phantom_slice(Phantom(), i * spacing[0], rows, rows, spacing[1], z_center)
            for i in range(slices)
        ]
    ).astype(np.float32)
    volume = Volume(
        array=array,
        spacing=spacing,
        origin=template.origin,
        row_direction=template.row_direction,
        column_direction=template.column_direction,
        slice_direction=template.slice_direction,
        modality="CT",
        study_instance_uid=template.study_instance_uid,
        series_instance_uid=template.series_instance_uid,
        frame_of_reference_uid=template.frame_of_reference_uid,
        sources=tuple(SliceSource(str(i), "1.2") for i in range(slices)),
    )
    pipeline = PipelineRegistry.discover().create(PIPELINE)
    pipeline.load(device)
    if device != "cpu":
        pipeline.run(volume, device)
    start = time.perf_counter()
    pipeline.run(volume, device)
    return {"seconds": time.perf_counter() - start}


def child(mode: str, folder: Path, out: Path, threads: int, device: str) -> dict[str, float]:
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--folder",
            str(folder),
            "--out",
            str(out),
            "--threads",
            str(threads),
            "--device",
            device,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{mode} measurement failed:\n{result.stderr}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (2 is best on 2 cores)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, or auto (CUDA when present); default cpu"
    )
    parser.add_argument("--child", choices=["load", "node", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = measure(args.child, args.folder, args.out, args.threads, _device(args.device))
        figures["peak_mib"] = _peak_mib()
        print(json.dumps(figures))
        return 0

    from dicomnode.synthetic import write_ct_series

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folder = Path(tmp) / "ct"
        start = time.perf_counter()
        write_ct_series(
            folder,
            slices=args.slices,
            rows=args.size,
            columns=args.size,
            slice_thickness=1.25,
            spacing=0.8,
        )
        print(
            f"series: {args.slices} slices of {args.size}x{args.size} written in "
            f"{time.perf_counter() - start:.1f} s; torch threads: {args.threads}; "
            f"device: {_device(args.device)}"
        )
        figures = {
            mode: child(mode, folder, Path(tmp) / f"out-{mode}", args.threads, args.device)
            for mode in ("load", "node", "bare")
        }
    print(f"{'measurement':<34}{'seconds':>10}{'peak MiB':>12}")
    labels = {
        "load": "load volume (load_series)",
        "node": f"node path (load + {PIPELINE} + save)",
        "bare": f"{PIPELINE} on the bare tensor",
    }
    for mode, label in labels.items():
        print(f"{label:<34}{figures[mode]['seconds']:>10.2f}{figures[mode]['peak_mib']:>12.0f}")
    ratio = figures["node"]["seconds"] / figures["bare"]["seconds"]
    share = figures["load"]["seconds"] / figures["node"]["seconds"]
    print(f"node path / bare tensor: {ratio:.2f}x; loading is {share:.0%} of the node path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
