"""Results benchmark: what writing DICOM costs next to the pipeline itself.

For a synthetic chest CT (default 256 slices of 512x512) it runs ``ct-lung``
once, then times, each separately: building the DICOM-SEG (BINARY, one segment
per label), building the TID 1500 SR, and writing both to disk, and prints them
next to the pipeline's own time on the same study, with the ratio
(SEG + SR) / pipeline. ``--segments 2`` keeps only the two lungs (the issue's
two-segment case); ``--segments all`` keeps every label ct-lung produced.
Run ``python bench/results.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--segments", choices=["2", "all"], default="2")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from dicomnode.protocol import ResultContext
    from dicomnode.results.seg import build_segmentation
    from dicomnode.results.sr import build_report
    from dicomnode.results.writer import read_sources
    from dicomnode.runner.registry import PipelineRegistry
    from dicomnode.runner.volume import load_series
    from dicomnode.synthetic import write_ct_series

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        series = write_ct_series(
            Path(tmp) / "ct",
            slices=args.slices,
            rows=args.size,
            columns=args.size,
            slice_thickness=1.25,
            spacing=0.8,
        )
        volume = load_series(series.paths)
        pipeline = PipelineRegistry.discover().create("ct-lung")
        pipeline.load("cpu")
        start = time.perf_counter()
        result = pipeline.run(volume, "cpu")
        pipeline_s = time.perf_counter() - start
        if args.segments == "2":
            keep = [s for s in result.segments if s.name.lower() in ("right lung", "left lung")]
            assert result.label_map is not None
            labels = {s.label for s in keep}
            label_map = np.where(np.isin(result.label_map, list(labels)), result.label_map, 0)
            result = replace(
                result,
                label_map=label_map.astype(np.uint8),
                segments=tuple(keep),
                measurements=tuple(
                    m for m in result.measurements if m.segment_label in labels | {None}
                ),
            )
        sources = read_sources(volume, series.paths)
        context = ResultContext(
            job_id=1,
            pipeline_name=pipeline.name,
            pipeline_version=pipeline.version,
            source_files=tuple(series.paths),
            out_dir=Path(tmp) / "out",
            node_name="BENCH",
            algorithm=pipeline.algorithm,
        )
        start = time.perf_counter()
        seg = build_segmentation(result, volume, sources, context)
        seg_s = time.perf_counter() - start
        start = time.perf_counter()
        sr = build_report(result, volume, sources, context, seg)
        sr_s = time.perf_counter() - start
        assert seg is not None and sr is not None
        out = Path(tmp) / "out"
        out.mkdir()
        start = time.perf_counter()
        seg.save_as(out / "seg.dcm", enforce_file_format=True)
        sr.save_as(out / "sr.dcm", enforce_file_format=True)
        save_s = time.perf_counter() - start
        seg_mib = (out / "seg.dcm").stat().st_size / 2**20
        frames = int(seg.NumberOfFrames)

    print(
        f"study: {args.slices} slices of {args.size}x{args.size}; "
        f"{len(result.segments)} segments; torch threads {args.threads}"
    )
    print(f"{'step':<36}{'seconds':>9}")
    print(f"{'ct-lung pipeline':<36}{pipeline_s:>9.2f}")
    print(f"{f'build SEG ({frames} frames, BINARY)':<36}{seg_s:>9.2f}")
    print(f"{'build SR (TID 1500)':<36}{sr_s:>9.2f}")
    print(f"{f'write both ({seg_mib:.1f} MiB SEG)':<36}{save_s:>9.2f}")
    total = seg_s + sr_s + save_s
    print(f"SEG + SR / pipeline: {total / pipeline_s:.2f}x ({total:.2f} s vs {pipeline_s:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
