"""Time the SEG of a result with many segments (an nnU-Net/TotalSegmentator-sized one).

A 64-slice CT of 256 x 256 pixels with ``--segments`` labels (default 100),
each a block a few slices thick at its own place, so every segment is present
on a handful of slices as real organ labels are. Builds the SEG as the node
does (BINARY, frames without the segment left out) and the SR beside it, and
prints the seconds, frames, file size and (when dciodvfy is installed)
its error count.

    PYTHONPATH=. python bench/seg_many_segments.py [--segments 100]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from dicomnode.protocol import Code, Measurement, PipelineResult, Segment
from dicomnode.results.common import sources_in_volume_order
from dicomnode.results.seg import build_segmentation
from dicomnode.results.sr import build_report
from dicomnode.runner.volume import load_series
from dicomnode.synthetic import write_ct_series
from tests.results.helpers import context, save

TYPE = Code("85756007", "SCT", "Tissue")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        series = write_ct_series(Path(tmp) / "ct", args.slices, args.size, args.size)
        volume = load_series(series.paths)
        labels = np.zeros(volume.array.shape, dtype=np.uint8)
        rng = np.random.default_rng(0)
        for label in range(1, args.segments + 1):
            z = int(rng.integers(0, args.slices - 8))
            y, x = (int(v) for v in rng.integers(0, args.size - 24, size=2))
            labels[z : z + int(rng.integers(3, 9)), y : y + 20, x : x + 20] = label
        present = sorted(set(np.unique(labels).tolist()) - {0})
        result = PipelineResult(
            label_map=labels,
            segments=tuple(Segment(v, f"structure_{v}", TYPE, TYPE) for v in present),
            measurements=tuple(
                Measurement(Code("118565006", "SCT", "Volume"), 1.0, Code("mL", "UCUM", "mL"), v)
                for v in present
            ),
            summary="bench",
        )
        sources = sources_in_volume_order(volume, [pydicom.dcmread(p) for p in series.paths])
        ctx = context(series.paths, Path(tmp) / "out", "nnunet", "1.0.0")
        start = time.perf_counter()
        seg = build_segmentation(result, volume, sources, ctx)
        seg_s = time.perf_counter() - start
        assert seg is not None
        start = time.perf_counter()
        report = build_report(result, volume, sources, ctx, seg)
        sr_s = time.perf_counter() - start
        path = save(seg, Path(tmp) / "out" / "seg.dcm")
        checked = ""
        if shutil.which("dciodvfy"):
            out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
            checked = f", dciodvfy: {len(errors)} error(s)"
        print(
            f"{len(present)} segments on {args.slices} x {args.size} x {args.size}: "
            f"SEG {seg_s:.2f} s ({int(seg.NumberOfFrames)} frames, "
            f"{path.stat().st_size / 1e6:.1f} MB), SR {sr_s:.2f} s"
            f" ({'built' if report is not None else 'none'}){checked}"
        )


if __name__ == "__main__":
    main()
