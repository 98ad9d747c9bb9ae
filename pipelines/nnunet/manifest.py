"""Write the model manifest of an nnU-Net v2 trained-model folder.

Hashing a folder's plans, dataset.json and every fold's checkpoint by hand is
tedious; this prints the manifest for a folder copied under the models
folder, to be read and saved as ``<models_dir>/<name>.yaml``::

    python -m pipelines.nnunet.manifest /var/lib/dicomnode/models \\
        /var/lib/dicomnode/models/Dataset291/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres \\
        --name totalseg-organs --version 2.0.0 \\
        --intended-use "Organ segmentation of adult CT. Not for diagnosis." \\
        > /var/lib/dicomnode/models/totalseg-organs.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "manifest_text"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_text(
    models_dir: Path,
    folder: Path,
    *,
    name: str,
    version: str,
    intended_use: str,
    checkpoint: str = "checkpoint_final.pth",
) -> str:
    """The manifest (YAML) of ``folder``: every fold's checkpoint, plans and dataset.json.

    Raises
    ------
    ValueError
        ``folder`` is not inside ``models_dir``, or lacks plans.json,
        dataset.json or any ``fold_N/<checkpoint>``.
    """
    models_dir, folder = models_dir.resolve(), folder.resolve()
    if not folder.is_relative_to(models_dir):
        raise ValueError(f"{folder} is not inside the models folder {models_dir}")
    folds = sorted(folder.glob(f"fold_*/{checkpoint}"))
    missing = [n for n in ("plans.json", "dataset.json") if not (folder / n).is_file()]
    if missing or not folds:
        raise ValueError(
            f"{folder} is not an nnU-Net v2 trained-model folder: no "
            + ", ".join(missing + ([] if folds else [f"fold_N/{checkpoint}"]))
        )
    first, *others = folds
    lines = [
        f"name: {json.dumps(name)}",
        f"version: {json.dumps(version)}",
        f"file: {json.dumps(first.relative_to(models_dir).as_posix())}",
        f"sha256: {_sha256(first)}",
        "files:",
    ]
    for path in (folder / "plans.json", folder / "dataset.json", *others):
        lines.append(
            f"  - {{file: {json.dumps(path.relative_to(models_dir).as_posix())}, "
            f"sha256: {_sha256(path)}}}"
        )
    lines.append(f"intended_use: {json.dumps(intended_use)}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the manifest of a model folder; 2 (and the reason) if it is not one."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.nnunet.manifest")
    parser.add_argument("models_dir", type=Path, help="runner.models_dir")
    parser.add_argument("folder", type=Path, help="the trained-model folder, inside models_dir")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--intended-use", required=True)
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    args = parser.parse_args(argv)
    try:
        text = manifest_text(
            args.models_dir,
            args.folder,
            name=args.name,
            version=args.version,
            intended_use=args.intended_use,
            checkpoint=args.checkpoint,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
