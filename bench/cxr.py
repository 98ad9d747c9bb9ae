"""Chest X-ray benchmark: what the Grad-CAM explanation costs.

Builds a DenseNet121 ``cxr-classify`` model with random weights (a manifest with
its SHA-256 in a temporary folder; thresholds 0, so every finding is positive
and every finding gets a Grad-CAM heatmap: the worst case), loads a synthetic
2048x2048 DX image as the node does, and times ``run`` with and without the
explanation on the CPU (and on CUDA when there is one). The weights are random:
this measures time, not accuracy. Prints per-image latency, images/s and the
ratio. Run ``python bench/cxr.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

LABELS = [
    ("pneumothorax", "36118008", "Pneumothorax"),
    ("nodule", "27925004", "Nodule"),
    ("pleural effusion", "60046008", "Pleural effusion"),
    ("cardiomegaly", "8186001", "Cardiomegaly"),
]


def write_model(folder: Path) -> None:
    from pipelines.cxr_classify.network import ModelInput, build_network

    network = build_network(ModelInput(), len(LABELS))
    weights = folder / "cxr-classify-bench.pt"
    torch.save(network.state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    manifest = {
        "name": "cxr-classify",
        "version": "bench",
        "file": weights.name,
        "sha256": digest,
        "labels": [
            {
                "index": i,
                "name": name,
                "threshold": 0.0,
                "code": {"value": value, "scheme": "SCT", "meaning": meaning},
            }
            for i, (name, value, meaning) in enumerate(LABELS)
        ],
        "input": {"size": 224, "in_channels": 1, "network": "DenseNet121"},
        "intended_use": "benchmark only: random weights",
    }
    (folder / "cxr-classify.yaml").write_text(yaml.safe_dump(manifest))


def measure(device: str, volume: object, model: object, repeats: int) -> dict[str, float]:
    from pipelines.cxr_classify import CXRClassifyPipeline

    figures = {}
    for explain in (False, True):
        pipeline = CXRClassifyPipeline(explain=explain)
        pipeline.load(device, {"cxr-classify": model})  # type: ignore[dict-item]
        pipeline.run(volume, device)  # type: ignore[arg-type]  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            result = pipeline.run(volume, device)  # type: ignore[arg-type]
        seconds = (time.perf_counter() - start) / repeats
        assert len(result.heatmaps) == (len(LABELS) if explain else 0)
        figures["with" if explain else "without"] = seconds
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=2048, help="rows and columns of the DX")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dicomnode.runner.manifest import verify_model
    from dicomnode.runner.volume import load_series
    from dicomnode.synthetic import write_dx_image

    with tempfile.TemporaryDirectory(prefix="bench-cxr-") as tmp:
        folder = Path(tmp)
        write_model(folder)
        model = verify_model(folder, "cxr-classify")
        dx = write_dx_image(folder / "dx.dcm", args.size, args.size).paths[0]
        volume = load_series([dx])
        devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
        print(
            f"DX {args.size}x{args.size}; DenseNet121 at 224; {len(LABELS)} findings, all "
            f"explained; torch threads {args.threads}; mean of {args.repeat} runs"
        )
        print(f"{'device':<8}{'without Grad-CAM':>20}{'with Grad-CAM':>18}{'ratio':>8}")
        for device in devices:
            f = measure(device, volume, model, args.repeat)
            print(
                f"{device:<8}{f['without'] * 1000:>11.0f} ms {1 / f['without']:>5.1f}/s"
                f"{f['with'] * 1000:>9.0f} ms {1 / f['with']:>5.1f}/s"
                f"{f['with'] / f['without']:>7.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
