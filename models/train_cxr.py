"""Train the ``cxr-classify`` network and write its weights and model manifest.

No weights can be downloaded for the node: a site trains its own with this
recipe (or brings weights made elsewhere, see below) and puts the two output
files in the runner's ``models_dir``.

Data
----
A folder with a CSV file (``labels.csv`` unless ``--csv`` says otherwise)
whose header is ``file,<label>,<label>,...`` and one row per image: the
image's path relative to the folder, then 0 or 1 for each label. Images are
DICOM (CR/DX, read as the node reads them) or PNG/JPEG (grey, MONOCHROME2).
Lateral and oblique DICOM views are skipped, as the pipeline would refuse them.

Every image goes through the pipeline's own preprocessing
(``pipelines.cxr_classify.preprocess``: MONOCHROME1 inversion, VOI or
percentile window to 0..1, aspect-keeping resize with padding), then MONAI
augmentation (small affine, contrast, noise; never a left-right flip, since
laterality is part of the anatomy). Loss: binary cross-entropy over the
sigmoid outputs (multi-label); optimiser: Adam.

Output
------
``<out>/<name>-<version>.pt`` (a torch ``state_dict``) and ``<out>/<name>.yaml``,
the manifest: labels with their codes and thresholds, the input contract, the
intended use and the weights' SHA-256. Training details are YAML comments.

Bringing other weights
----------------------
Weights trained elsewhere work when they are a ``state_dict`` of the network
the manifest's ``input.network`` names (``DenseNet121`` or ``densenet-tiny``,
MONAI, 2-D) with one output per label; write a manifest like the one this
script writes, with ``sha256`` from ``sha256sum``.

Example::

    python models/train_cxr.py --data /data/cxr --labels pneumothorax,nodule \\
        --out /var/lib/dicomnode/models --epochs 20 --size 224
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.transforms.compose import Compose
from monai.transforms.intensity.array import RandAdjustContrast, RandGaussianNoise
from monai.transforms.spatial.array import RandAffine
from monai.utils.misc import set_determinism
from monai.utils.type_conversion import convert_to_tensor
from PIL import Image

from dicomnode.errors import VolumeError
from dicomnode.protocol import Code, InputRefused, SliceSource, Volume
from dicomnode.runner.manifest import read_manifest, sha256_of
from dicomnode.runner.volume import load_series
from pipelines.cxr_classify.codes import known_finding
from pipelines.cxr_classify.network import NETWORKS, ModelInput, build_network
from pipelines.cxr_classify.preprocess import check_view, preprocess

LOGGER = logging.getLogger("train_cxr")

DEFAULT_INTENDED_USE = (
    "Triage of adult frontal (PA/AP) chest radiographs (CR/DX): flags images that may show "
    "the listed findings so they are read sooner. Not for diagnosis; every image is read by "
    "a radiologist. Lateral and oblique views are refused."
)
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


@dataclass
class TrainConfig:
    """Everything one training run needs (the command line, as data)."""

    data: Path
    labels: tuple[str, ...]
    out: Path
    epochs: int = 10
    size: int = 224
    network: str = "DenseNet121"
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    name: str = "cxr-classify"
    version: str = "1.0.0"
    csv_name: str = "labels.csv"
    codes: dict[str, Code] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    default_threshold: float = 0.5
    intended_use: str = DEFAULT_INTENDED_USE
    augment: bool = True


@dataclass(frozen=True)
class TrainReport:
    """What a run wrote and how well it fits its training data."""

    weights: Path
    manifest: Path
    sha256: str
    images: int
    skipped: tuple[str, ...]
    steps: int
    final_loss: float
    accuracy: dict[str, float]  # per label, on the training images, at its threshold


def train(config: TrainConfig) -> TrainReport:
    """Train on ``config.data`` and write weights and manifest into ``config.out``.

    Raises
    ------
    ValueError
        If the CSV is missing or lacks a label column, a label has no code,
        a threshold is out of 0..1, or no usable image remains.
    """
    if config.network not in NETWORKS:
        raise ValueError(f"unknown network {config.network!r}; known: {', '.join(NETWORKS)}")
    codes = _codes(config)
    thresholds = {
        name: config.thresholds.get(name, config.default_threshold) for name in config.labels
    }
    for name, value in thresholds.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"threshold of {name} must be in 0..1, got {value}")
    spec = ModelInput(size=(config.size, config.size), in_channels=1, network=config.network)
    set_determinism(seed=config.seed)
    images, targets, skipped = _load_dataset(config, spec)
    LOGGER.info(
        "%d images, %d skipped; positives per label: %s",
        len(images),
        len(skipped),
        dict(zip(config.labels, targets.sum(0).tolist(), strict=True)),
    )

    device = torch.device(config.device)
    network = build_network(spec, len(config.labels)).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    augment = _augmentation(config.size, config.seed) if config.augment else None
    generator = torch.Generator().manual_seed(config.seed)
    steps = 0
    loss_value = float("nan")
    network.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            chosen = order[start : start + config.batch_size]
            batch = images[chosen]
            if augment is not None:
                # Plain tensors: a MONAI MetaTensor in the batch spoils BatchNorm's running
                # statistics (the network then fails in eval mode).
                batch = torch.stack(
                    [convert_to_tensor(augment(item), track_meta=False) for item in batch]
                )
            logits = network(batch.to(device))
            loss = loss_fn(logits, targets[chosen].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            steps += 1
            total += loss.item() * len(chosen)
        loss_value = total / len(images)
        LOGGER.info("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, loss_value)

    _precise_batch_norm(network, images, config.batch_size, device)
    accuracy = _accuracy(network, images, targets, config.labels, thresholds, device)
    LOGGER.info("training accuracy: %s", accuracy)
    config.out.mkdir(parents=True, exist_ok=True)
    weights = config.out / f"{config.name}-{config.version}.pt"
    state = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    torch.save(state, weights)
    digest = sha256_of(weights)
    manifest = config.out / f"{config.name}.yaml"
    _write_manifest(
        manifest,
        config,
        spec,
        codes,
        thresholds,
        weights,
        digest,
        len(images),
        steps,
        loss_value,
        accuracy,
    )
    read_manifest(manifest)  # what we write must be valid
    return TrainReport(
        weights, manifest, digest, len(images), tuple(skipped), steps, loss_value, accuracy
    )


def _codes(config: TrainConfig) -> dict[str, Code]:
    codes: dict[str, Code] = {}
    for name in config.labels:
        code = config.codes.get(name) or known_finding(name)
        if code is None:
            raise ValueError(
                f"label {name!r} has no code: give one with --code {name}=VALUE:SCHEME:Meaning"
            )
        codes[name] = code
    return codes


def _load_dataset(
    config: TrainConfig, spec: ModelInput
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    table = config.data / config.csv_name
    if not table.is_file():
        raise ValueError(f"no label table at {table} (header: file,{','.join(config.labels)})")
    images: list[torch.Tensor] = []
    targets: list[list[float]] = []
    skipped: list[str] = []
    with table.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("file", *config.labels) if c not in columns]
        if missing:
            raise ValueError(f"{table}: no column(s) {', '.join(missing)} (has {columns})")
        for number, row in enumerate(reader, start=2):
            path = config.data / row["file"]
            try:
                volume = _read_image(path)
                check_view(volume.attributes)
            except (InputRefused, VolumeError, OSError) as exc:
                LOGGER.warning("skipping %s (line %d): %s", path, number, exc)
                skipped.append(f"{row['file']}: {exc}")
                continue
            grid, _ = preprocess(volume, spec.size)
            images.append(grid)
            targets.append([_flag(row[name], table, number, name) for name in config.labels])
    if not images:
        raise ValueError(f"{table}: no usable image")
    return torch.stack(images), torch.tensor(targets, dtype=torch.float32), skipped


def _flag(text: str | None, table: Path, line: int, label: str) -> float:
    value = (text or "").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{table} line {line}: {label} must be 0 or 1, got {value!r}")
    return float(value)


def _read_image(path: Path) -> Volume:
    """A one-slice volume of a DICOM file, or of a PNG/JPEG (MONOCHROME2)."""
    if path.suffix.lower() not in _IMAGE_SUFFIXES:
        return load_series([path])
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("I") if image.mode not in ("L", "I;16") else image)
    return Volume(
        array=pixels.astype(np.float32)[None],
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, 1.0),
        modality="DX",
        study_instance_uid="",
        series_instance_uid="",
        frame_of_reference_uid="",
        sources=(SliceSource(path.name, ""),),
        attributes={"PhotometricInterpretation": "MONOCHROME2", "PixelSpacingSource": "none"},
    )


def _augmentation(size: int, seed: int) -> Compose:
    transform = Compose(
        [
            RandAffine(
                prob=0.5,
                rotate_range=0.08,
                scale_range=0.08,
                translate_range=(0.04 * size, 0.04 * size),
                padding_mode="zeros",
            ),
            RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25)),
            RandGaussianNoise(prob=0.2, std=0.01),
        ]
    )
    for offset, step in enumerate(transform.transforms):  # independent draws per transform
        step.set_random_state(seed=seed + offset)
    return transform


def _precise_batch_norm(
    network: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device
) -> None:
    """Recompute every BatchNorm's running statistics on the unaugmented images.

    The running averages collected during training follow the augmented
    batches and the still-changing weights; inference sees unaugmented images
    through the final weights ("precise BN", Wu and Johnson 2021).
    """
    layers = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the passes below
    network.train()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            network(images[start : start + batch_size].to(device))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    network.eval()


def _accuracy(
    network: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    labels: Sequence[str],
    thresholds: dict[str, float],
    device: torch.device,
) -> dict[str, float]:
    network.eval()
    with torch.inference_mode():
        probabilities = torch.cat(
            [
                torch.sigmoid(network(images[i : i + 64].to(device))).cpu()
                for i in range(0, len(images), 64)
            ]
        )
    return {
        name: float(
            ((probabilities[:, k] >= thresholds[name]).float() == targets[:, k]).float().mean()
        )
        for k, name in enumerate(labels)
    }


def _write_manifest(
    path: Path,
    config: TrainConfig,
    spec: ModelInput,
    codes: dict[str, Code],
    thresholds: dict[str, float],
    weights: Path,
    digest: str,
    images: int,
    steps: int,
    loss: float,
    accuracy: dict[str, float],
) -> None:
    document = {
        "name": config.name,
        "version": config.version,
        "file": weights.name,
        "sha256": digest,
        "labels": [
            {
                "index": index,
                "name": name,
                "code": {
                    "value": codes[name].value,
                    "scheme": codes[name].scheme,
                    "meaning": codes[name].meaning,
                },
                "threshold": thresholds[name],
            }
            for index, name in enumerate(config.labels)
        ],
        "input": {
            "modalities": ["CR", "DX"],
            "views": ["PA", "AP"],
            "size": spec.size[0],
            "in_channels": spec.in_channels,
            "network": spec.network,
            "intensity": "VOI window (else 1-99 percentile) to 0..1, MONOCHROME1 inverted",
            "resize": "keep physical aspect, centre, zero padding",
        },
        "intended_use": config.intended_use,
    }
    accuracies = ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    header = (
        f"# Written by models/train_cxr.py on {datetime.date.today().isoformat()}.\n"
        f"# Trained on {images} images from {config.data.name}/{config.csv_name}: "
        f"{config.epochs} epochs, {steps} steps, batch {config.batch_size}, "
        f"Adam lr {config.learning_rate:g}, seed {config.seed}, "
        f"augmentation {'on' if config.augment else 'off'}.\n"
        f"# Final training loss {loss:.4f}; training accuracy {accuracies}.\n"
    )
    path.write_text(header + yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def _parse_code(text: str) -> tuple[str, Code]:
    name, _, rest = text.partition("=")
    parts = rest.split(":", 2)
    if not name or not parts[0]:
        raise argparse.ArgumentTypeError(
            f"--code wants NAME=VALUE[:SCHEME[:Meaning]], got {text!r}"
        )
    scheme = parts[1] if len(parts) > 1 and parts[1] else "SCT"
    meaning = parts[2] if len(parts) > 2 and parts[2] else name.replace("_", " ").capitalize()
    return name, Code(parts[0], scheme, meaning)


def _parse_threshold(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--threshold wants NAME=NUMBER, got {text!r}") from exc


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """The command line as a :class:`TrainConfig`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with labels.csv")
    parser.add_argument("--labels", required=True, help="comma-separated label columns")
    parser.add_argument("--out", type=Path, required=True, help="folder for weights + manifest")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=224, help="network input size (square)")
    parser.add_argument("--network", default="DenseNet121", choices=sorted(NETWORKS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--name", default="cxr-classify")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--csv", default="labels.csv", help="label table inside --data")
    parser.add_argument(
        "--code",
        type=_parse_code,
        action="append",
        default=[],
        metavar="NAME=VALUE[:SCHEME[:Meaning]]",
        help="code of a label not in the built-in SNOMED CT table",
    )
    parser.add_argument(
        "--threshold",
        type=_parse_threshold,
        action="append",
        default=[],
        metavar="NAME=P",
        help="decision threshold of one label",
    )
    parser.add_argument("--default-threshold", type=float, default=0.5)
    parser.add_argument("--intended-use", default=DEFAULT_INTENDED_USE)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    args = parser.parse_args(argv)
    labels = tuple(label.strip() for label in args.labels.split(",") if label.strip())
    if not labels:
        parser.error("--labels names no label")
    return TrainConfig(
        data=args.data,
        labels=labels,
        out=args.out,
        epochs=args.epochs,
        size=args.size,
        network=args.network,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        device=args.device,
        name=args.name,
        version=args.version,
        csv_name=args.csv,
        codes=dict(args.code),
        thresholds=dict(args.threshold),
        default_threshold=args.default_threshold,
        intended_use=args.intended_use,
        augment=args.augment,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Train from the command line; print where the files went. Returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = parse_args(argv)
    try:
        report = train(config)
    except ValueError as exc:
        LOGGER.error("%s", exc)
        return 2
    print(f"weights:  {report.weights}")
    print(f"manifest: {report.manifest}")
    print(f"sha256:   {report.sha256}")
    print("training accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in report.accuracy.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
