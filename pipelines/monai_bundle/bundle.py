"""Reading a MONAI bundle folder: metadata, inference config, network, weights.

A bundle (MONAI Bundle Specification) is a folder holding::

    configs/metadata.json        name, version, network_data_format (inputs, outputs)
    configs/inference.json|yaml  network_def, preprocessing, inferer, postprocessing...
    models/model.pt              the network's state dict

The inference config is parsed with :class:`monai.bundle.ConfigParser`, which
instantiates ``network_def`` and ``inferer`` exactly as ``monai.bundle run``
would. Its ``preprocessing`` is written for files (``LoadImaged`` of a NIfTI
path and so on), so it is not run as it is: the transforms that change values
or the grid are read for their parameters and redone on the in-memory volume
(:class:`Step`); reading, channel and type transforms have nothing to do here;
anything else is named in :attr:`Bundle.ignored`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from monai.bundle.config_parser import ConfigParser
from monai.inferers.inferer import SimpleInferer

from dicomnode.protocol import InputRefused

from .orientation import INDEX_ORDER

__all__ = [
    "Bundle",
    "BundleError",
    "NormalizeIntensity",
    "Resample",
    "Resize",
    "ScaleIntensityRange",
    "Step",
    "read_bundle",
    "sha256_of",
]

LOGGER = logging.getLogger(__name__)

WEIGHTS = Path("models") / "model.pt"
METADATA = Path("configs") / "metadata.json"
INFERENCE_CONFIGS = tuple(Path("configs") / f"inference.{ext}" for ext in ("json", "yaml", "yml"))

# Transforms with nothing to do on an in-memory volume that is already one
# float channel: reading, channel handling, types.
_NOTHING_TO_DO = frozenset(
    {
        "LoadImage",
        "EnsureChannelFirst",
        "AddChannel",
        "EnsureType",
        "ToTensor",
        "CastToType",
        "ToDevice",
    }
)
_DICOM_MODALITY = re.compile(r"^[A-Z]{2,3}$")
_MODALITY_ALIASES = {"MRI": "MR", "PET": "PT"}

Spacing = tuple[float, float, float]


class BundleError(InputRefused):
    """The bundle cannot be run: no folder configured, a file missing or
    unreadable, weights that do not fit the network or their checksum.

    A subclass of :class:`~dicomnode.protocol.InputRefused` because pipelines
    may import nothing of ``dicomnode`` but the protocol (so not
    ``dicomnode.errors.ModelError``), and because retrying cannot fix a
    configuration: the runner ends the run DEAD at once with this message.
    """


class Step:
    """One preprocessing step on the tensor ``(1, 1, X, Y, Z)`` and its spacing (mm)."""

    def __call__(self, image: torch.Tensor, spacing: Spacing) -> tuple[torch.Tensor, Spacing]:
        """Return the processed image and its spacing."""
        raise NotImplementedError


@dataclass(frozen=True)
class ScaleIntensityRange(Step):
    """``ScaleIntensityRanged``: ``[a_min, a_max]`` to ``[b_min, b_max]``, clipped if asked."""

    a_min: float
    a_max: float
    b_min: float | None = None
    b_max: float | None = None
    clip: bool = False

    def __call__(self, image: torch.Tensor, spacing: Spacing) -> tuple[torch.Tensor, Spacing]:
        """Scale linearly (MONAI's rule: no ``b_*`` means to ``[0, 1]`` without offset)."""
        if self.a_max == self.a_min:
            out = image - self.a_min
        else:
            out = (image - self.a_min) / (self.a_max - self.a_min)
        if self.b_min is not None and self.b_max is not None:
            out = out * (self.b_max - self.b_min) + self.b_min
            if self.clip:
                out = out.clamp(min(self.b_min, self.b_max), max(self.b_min, self.b_max))
        return out, spacing


@dataclass(frozen=True)
class NormalizeIntensity(Step):
    """``NormalizeIntensityd`` without explicit subtrahend/divisor: zero mean, unit std."""

    nonzero: bool = False
    channel_wise: bool = False

    def __call__(self, image: torch.Tensor, spacing: Spacing) -> tuple[torch.Tensor, Spacing]:
        """Normalise over all voxels (or the non-zero ones), per channel if asked."""
        if self.channel_wise and image.shape[1] > 1:
            whole = NormalizeIntensity(self.nonzero)
            channels = [whole(image[:, c : c + 1], spacing)[0] for c in range(image.shape[1])]
            return torch.cat(channels, dim=1), spacing
        mask = image != 0 if self.nonzero else torch.ones_like(image, dtype=torch.bool)
        values = image[mask]
        if values.numel() == 0:
            return image, spacing
        mean = values.mean()
        std = values.std(unbiased=False)
        scale = std if float(std) > 0 else torch.ones_like(std)
        out = image.clone()
        out[mask] = (values - mean) / scale
        return out, spacing


@dataclass(frozen=True)
class Resample(Step):
    """``Spacingd``: resample to ``pixdim`` (mm per axis; 0 or less keeps the axis)."""

    pixdim: Spacing
    mode: str = "trilinear"

    def __call__(self, image: torch.Tensor, spacing: Spacing) -> tuple[torch.Tensor, Spacing]:
        """Interpolate to the target spacing (corner voxels' centres stay in place)."""
        target = tuple(p if p > 0 else s for p, s in zip(self.pixdim, spacing, strict=True))
        shape = tuple(
            max(1, round(n * s / t))
            for n, s, t in zip(image.shape[2:], spacing, target, strict=True)
        )
        if shape == tuple(image.shape[2:]):
            return image, spacing
        out = F.interpolate(
            image,
            size=shape,
            mode=self.mode,
            **({} if self.mode == "nearest" else {"align_corners": False}),
        )
        actual = tuple(s * n / m for s, n, m in zip(spacing, image.shape[2:], shape, strict=True))
        return out, (actual[0], actual[1], actual[2])


@dataclass(frozen=True)
class Resize(Step):
    """``Resized``: to ``spatial_size`` voxels (-1 keeps an axis), MONAI's ``mode``."""

    spatial_size: tuple[int, int, int]
    mode: str = "area"

    def __call__(self, image: torch.Tensor, spacing: Spacing) -> tuple[torch.Tensor, Spacing]:
        """Interpolate to the size (the spacing follows)."""
        shape = tuple(
            n if size <= 0 else size
            for n, size in zip(image.shape[2:], self.spatial_size, strict=True)
        )
        if shape == tuple(image.shape[2:]):
            return image, spacing
        mode = {"bilinear": "trilinear", "linear": "trilinear"}.get(self.mode, self.mode)
        aligned = {} if mode in ("nearest", "area", "nearest-exact") else {"align_corners": False}
        out = F.interpolate(image, size=shape, mode=mode, **aligned)
        actual = tuple(s * n / m for s, n, m in zip(spacing, image.shape[2:], shape, strict=True))
        return out, (actual[0], actual[1], actual[2])


@dataclass(frozen=True)
class Bundle:
    """A bundle read and its network loaded.

    Attributes
    ----------
    root : Path
        The bundle folder.
    name, version : str
        From the metadata (``name``, else the folder's name; ``version``).
    sha256 : str
        Of ``models/model.pt``.
    labels : mapping of int to str
        Output channel to name, from ``channel_def`` (channel 0 is background).
    out_channels : int
        Channels of the network's output.
    modalities : frozenset of str
        DICOM modalities the metadata declares for the input (empty: unknown).
    axcodes : str
        The ``Orientationd`` axis codes, or ``""`` when the config has none.
    steps : tuple of Step
        Preprocessing redone on the in-memory volume, in config order.
    ignored : tuple of str
        Preprocessing transforms not redone.
    postprocessing : tuple of callable
        The config's own ``postprocessing`` transforms that work on the
        prediction alone (``Activationsd``, ``AsDiscreted``,
        ``KeepLargestConnectedComponentd``...), in config order, as MONAI
        builds them; they run on ``{"pred": (C, X, Y, Z)}``.
    post_ignored : tuple of str
        Postprocessing transforms not run (``Invertd``: its effect is the
        resampling back; ``SaveImaged``: nothing is saved; others are named).
    multi_label : bool
        The postprocessing applies a sigmoid: each output channel is a
        label of its own (channel ``c`` is label ``c + 1``), not one-hot.
    post_key : str
        The prediction's key in the postprocessing (``pred``).
    input_shape : (int, int, int), optional
        The input's spatial shape the metadata declares (``spatial_shape``),
        else the inferer's ``roi_size``: what ``models check`` runs.
    in_channels : int
        The input's channels (metadata ``num_channels``).
    detector : object, optional
        A detection bundle's ``detector`` (MONAI's ``RetinaNetDetector``), its
        ``detector_ops`` applied (target keys, box selector, sliding window),
        its network the loaded ``network_def``; ``None`` for other bundles.
    score_threshold : float, optional
        The detector's box selector ``score_thresh`` (detection bundles).
    network : torch.nn.Module
        In eval mode, on the load device.
    inferer : callable
        The config's ``inferer`` (``SimpleInferer`` when it has none).
    """

    root: Path
    name: str
    version: str
    sha256: str
    labels: Mapping[int, str]
    out_channels: int
    modalities: frozenset[str]
    axcodes: str
    network: torch.nn.Module
    inferer: Callable[..., Any]
    steps: tuple[Step, ...] = ()
    ignored: tuple[str, ...] = field(default=())
    postprocessing: tuple[Callable[[dict[str, Any]], dict[str, Any]], ...] = ()
    post_ignored: tuple[str, ...] = ()
    multi_label: bool = False
    post_key: str = "pred"
    input_shape: tuple[int, int, int] | None = None
    in_channels: int = 1
    detector: Any = None
    score_threshold: float | None = None

    @property
    def discretises(self) -> bool:
        """Whether the postprocessing turns the prediction into labels itself."""
        return any(
            type(t).__name__.removesuffix("d").removesuffix("D") == "AsDiscrete"
            for t in self.postprocessing
        )


def sha256_of(path: Path) -> str:
    """SHA-256 (hex) of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_bundle(root: Path, device: str) -> Bundle:
    """Read the bundle at ``root`` and load its network on ``device``.

    Raises
    ------
    BundleError
        If a file is missing or unreadable, the config has no
        ``network_def``, the weights' checksum differs from the one the
        bundle declares, or the weights do not fit the network.
    """
    if not root.is_dir():
        raise BundleError(f"monai-bundle: the bundle folder {root} does not exist")
    metadata = _read_metadata(root)
    config_path = next((root / p for p in INFERENCE_CONFIGS if (root / p).is_file()), None)
    if config_path is None:
        raise BundleError(f"monai-bundle: {root} has no configs/inference.json (or .yaml)")
    parser = ConfigParser()
    try:
        parser.read_config(str(config_path))
        parser.read_meta(str(root / METADATA))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise BundleError(f"monai-bundle: cannot read {config_path}: {exc}") from exc
    parser["bundle_root"] = str(root)
    if parser.get("network_def") is None:
        raise BundleError(f"monai-bundle: {config_path} has no network_def")

    weights = root / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"monai-bundle: {root} has no {WEIGHTS}")
    sha256 = _verified_sha256(root, weights)
    network = _load_network(parser, weights, device, config_path)

    if parser.get("detector") is not None:
        return _detection_bundle(root, metadata, parser, network, sha256, device, config_path)

    output = _output_format(metadata)
    labels = _channel_names(metadata)
    out_channels = int(output.get("num_channels") or max(labels, default=1) + 1)
    if out_channels > 256:
        raise BundleError(f"monai-bundle: {out_channels} output channels do not fit labels 1..255")

    steps, ignored, axcodes = _preprocessing(parser)
    post, post_ignored, multi_label, post_key = _postprocessing(parser, config_path)
    inferer = parser.get_parsed_content("inferer") if parser.get("inferer") else SimpleInferer()
    if not callable(inferer):
        raise BundleError(f"monai-bundle: the inferer of {config_path} is not callable")
    return Bundle(
        root=root,
        name=str(metadata.get("name") or root.name),
        version=str(metadata.get("version") or "unknown"),
        sha256=sha256,
        labels=labels,
        out_channels=out_channels,
        modalities=_modalities(metadata),
        axcodes=axcodes,
        network=network,
        inferer=inferer,
        steps=steps,
        ignored=ignored,
        postprocessing=post,
        post_ignored=post_ignored,
        multi_label=multi_label,
        post_key=post_key,
        input_shape=_input_shape(metadata, inferer),
        in_channels=_in_channels(metadata),
    )


def _channel_names(metadata: Mapping[str, Any]) -> dict[int, str]:
    channel_def = _output_format(metadata).get("channel_def") or {}
    labels: dict[int, str] = {}
    if isinstance(channel_def, Mapping):
        for key, value in channel_def.items():
            if str(key).isdigit():
                labels[int(key)] = str(value)
    return labels


def _detection_bundle(
    root: Path,
    metadata: Mapping[str, Any],
    parser: ConfigParser,
    network: torch.nn.Module,
    sha256: str,
    device: str,
    config_path: Path,
) -> Bundle:
    """A bundle whose config defines a ``detector`` (the model zoo's
    lung_nodule_ct_detection: ``RetinaNetDetector`` over ``network_def``).

    The detector is built as the config says and its ``detector_ops`` run
    (``set_target_keys``, ``set_box_selector_parameters``,
    ``set_sliding_window_inferer``); its network is the loaded
    ``network_def``. The config's ``inferer`` (a script of the bundle's) and
    ``postprocessing`` (boxes to world coordinates for a JSON file) are not
    built: the node maps the detector's boxes to the volume's grid itself.
    """
    try:
        detector = parser.get_parsed_content("detector")
        if parser.get("detector_ops") is not None:
            parser.get_parsed_content("detector_ops")
    except Exception as exc:  # any failure of the config's own code
        raise BundleError(
            f"monai-bundle: the detector of {config_path} cannot be built: {exc}"
        ) from exc
    if not callable(detector) or not hasattr(detector, "network"):
        raise BundleError(
            f"monai-bundle: the detector of {config_path} is not a MONAI detector "
            "(RetinaNetDetector)"
        )
    detector.network = network.to(torch.device(device))
    detector.eval()
    selector = getattr(detector, "box_selector", None)
    score_thresh = getattr(selector, "score_thresh", None)
    classes = int(getattr(network, "num_classes", 0) or 0)
    labels = _channel_names(metadata)
    steps, ignored, axcodes = _preprocessing(parser)
    return Bundle(
        root=root,
        name=str(metadata.get("name") or root.name),
        version=str(metadata.get("version") or "unknown"),
        sha256=sha256,
        labels=labels,
        out_channels=max(classes, max(labels, default=-1) + 1, 1),
        modalities=_modalities(metadata),
        axcodes=axcodes,
        network=network,
        inferer=detector,
        steps=steps,
        ignored=ignored,
        post_ignored=_post_names(parser),
        input_shape=_input_shape(metadata, None),
        in_channels=_in_channels(metadata),
        detector=detector,
        score_threshold=None if score_thresh is None else float(score_thresh),
    )


def _post_names(parser: ConfigParser) -> tuple[str, ...]:
    raw = parser.get("postprocessing")
    transforms = raw.get("transforms") if isinstance(raw, Mapping) else raw
    if not isinstance(transforms, list):
        return ()
    return tuple(
        str(t.get("_target_", "")).rsplit(".", 1)[-1] for t in transforms if isinstance(t, Mapping)
    )


def _read_metadata(root: Path) -> dict[str, Any]:
    path = root / METADATA
    if not path.is_file():
        raise BundleError(f"monai-bundle: {root} has no {METADATA}")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"monai-bundle: cannot read {path}: {exc}") from exc
    if not isinstance(metadata, dict):
        raise BundleError(f"monai-bundle: {path} is not a JSON object")
    return metadata


def _network_format(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    found = metadata.get("network_data_format")
    return found if isinstance(found, Mapping) else {}


def _output_format(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    outputs = _network_format(metadata).get("outputs")
    if not isinstance(outputs, Mapping) or not outputs:
        return {}
    found = outputs.get("pred", next(iter(outputs.values())))
    return found if isinstance(found, Mapping) else {}


def _modalities(metadata: Mapping[str, Any]) -> frozenset[str]:
    inputs = _network_format(metadata).get("inputs")
    image = inputs.get("image") if isinstance(inputs, Mapping) else None
    declared = image.get("modality") if isinstance(image, Mapping) else None
    if not isinstance(declared, str):
        return frozenset()
    words = (w.upper() for w in re.split(r"[^A-Za-z]+", declared) if w)
    return frozenset(
        m for m in (_MODALITY_ALIASES.get(w, w) for w in words) if _DICOM_MODALITY.match(m)
    )


def _declared_hash(root: Path, weights: Path) -> tuple[str, str] | None:
    """(hash type, value) the bundle declares for its weights, if any: a
    ``models/model.pt.sha256`` file, or ``large_files.yml``/``.json`` (the
    model zoo's download list, ``hash_type`` md5 or sha256)."""
    sidecar = weights.with_name(weights.name + ".sha256")
    if sidecar.is_file():
        words = sidecar.read_text(encoding="utf-8").split()
        if words:
            return "sha256", words[0].lower()
    for name in ("large_files.yml", "large_files.yaml", "large_files.json"):
        path = root / name
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise BundleError(f"monai-bundle: cannot read {path}: {exc}") from exc
        items = data.get("large_files", []) if isinstance(data, Mapping) else []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, Mapping):
                continue
            listed = Path(str(item.get("path", ""))).as_posix().lstrip("./")
            kind = str(item.get("hash_type", "")).lower()
            value = item.get("hash_val")
            if listed == WEIGHTS.as_posix() and kind in ("md5", "sha256") and value:
                return kind, str(value).lower()
    return None


def _verified_sha256(root: Path, weights: Path) -> str:
    sha256 = sha256_of(weights)
    declared = _declared_hash(root, weights)
    if declared is not None:
        kind, expected = declared
        actual = (
            sha256
            if kind == "sha256"
            else hashlib.md5(weights.read_bytes(), usedforsecurity=False).hexdigest()
        )
        if actual != expected:
            raise BundleError(
                f"monai-bundle: {weights} has {kind} {actual}, but the bundle declares "
                f"{expected}; the weights are not the bundle's"
            )
        LOGGER.info("monai-bundle: %s matches its declared %s", weights, kind)
    else:
        LOGGER.info("monai-bundle: %s declares no checksum; sha256 %s", root.name, sha256)
    return sha256


def _load_network(
    parser: ConfigParser, weights: Path, device: str, config_path: Path
) -> torch.nn.Module:
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as exc:  # any failure of the config's own code
        raise BundleError(
            f"monai-bundle: network_def of {config_path} cannot be built: {exc}"
        ) from exc
    if not isinstance(network, torch.nn.Module):
        raise BundleError(f"monai-bundle: network_def of {config_path} is not a torch module")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise BundleError(f"monai-bundle: cannot read the weights {weights}: {exc}") from exc
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # a CheckpointSaver file: {"model": state_dict, ...}
    if not isinstance(state, Mapping):
        raise BundleError(f"monai-bundle: {weights} holds no state dict")
    if state and all(str(k).startswith("module.") for k in state):
        state = {str(k).removeprefix("module."): v for k, v in state.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"monai-bundle: {weights} does not fit network_def: {exc}") from exc
    return network.to(torch.device(device)).eval()


def _preprocessing(parser: ConfigParser) -> tuple[tuple[Step, ...], tuple[str, ...], str]:
    """Steps, ignored transform names and axis codes from ``preprocessing``."""
    raw = parser.get("preprocessing")
    transforms = raw.get("transforms") if isinstance(raw, Mapping) else raw
    if not isinstance(transforms, list):
        if raw is not None:
            LOGGER.warning("monai-bundle: preprocessing is not a list of transforms; not redone")
        return (), (), "RAS"
    base = "preprocessing#transforms" if isinstance(raw, Mapping) else "preprocessing"
    steps: list[Step] = []
    ignored: list[str] = []
    axcodes = INDEX_ORDER
    for index, item in enumerate(transforms):
        if not isinstance(item, Mapping):
            ignored.append(str(item))
            continue
        target = str(item.get("_target_", "")).rsplit(".", 1)[-1]
        name = target.removesuffix("d").removesuffix("D")

        def value(
            key: str, default: Any = None, item: Mapping[str, Any] = item, index: int = index
        ) -> Any:
            if key not in item:
                return default
            return parser.get_parsed_content(f"{base}#{index}#{key}")

        if name in _NOTHING_TO_DO:
            continue
        if name == "Orientation":
            axcodes = str(value("axcodes", "RAS"))
        elif name == "Spacing":
            pixdim = value("pixdim")
            values = [float(p) for p in pixdim] if isinstance(pixdim, list | tuple) else []
            if pixdim is not None and not values:
                values = [float(pixdim)] * 3
            values = (values + [values[-1]] * 3)[:3] if values else [0.0] * 3
            mode = str(value("mode", "bilinear"))
            steps.append(
                Resample(
                    (values[0], values[1], values[2]),
                    "nearest" if mode == "nearest" else "trilinear",
                )
            )
        elif name == "ScaleIntensityRange":
            b_min, b_max = value("b_min"), value("b_max")
            steps.append(
                ScaleIntensityRange(
                    float(value("a_min")),
                    float(value("a_max")),
                    None if b_min is None else float(b_min),
                    None if b_max is None else float(b_max),
                    bool(value("clip", False)),
                )
            )
        elif name == "Resize":
            size = value("spatial_size")
            sizes = [int(v) for v in size] if isinstance(size, list | tuple) else [int(size)] * 3
            sizes = (sizes + [sizes[-1]] * 3)[:3]
            steps.append(Resize((sizes[0], sizes[1], sizes[2]), str(value("mode", "area"))))
        elif name == "NormalizeIntensity" and value("subtrahend") is None:
            steps.append(
                NormalizeIntensity(
                    bool(value("nonzero", False)), bool(value("channel_wise", False))
                )
            )
        else:
            ignored.append(target or str(item))
    if ignored:
        LOGGER.warning("monai-bundle: preprocessing not redone: %s", ", ".join(ignored))
    return tuple(steps), tuple(ignored), axcodes


# Postprocessing transforms that work on the prediction alone, run as the
# bundle builds them; those that need the input's metadata or files are not.
_POST_RUN = frozenset(
    {
        "Activations",
        "AsDiscrete",
        "KeepLargestConnectedComponent",
        "FillHoles",
        "RemoveSmallObjects",
        "LabelFilter",
    }
)
_POST_NOTHING_TO_DO = frozenset(
    {"Invert", "SaveImage", "EnsureType", "ToDevice", "ToTensor", "CopyItems", "DeleteItems"}
)


def _postprocessing(
    parser: ConfigParser, config_path: Path
) -> tuple[tuple[Callable[[dict[str, Any]], dict[str, Any]], ...], tuple[str, ...], bool, str]:
    """The runnable ``postprocessing`` transforms, those not run, whether a
    sigmoid makes the output multi-label, and the prediction's key."""
    raw = parser.get("postprocessing")
    transforms = raw.get("transforms") if isinstance(raw, Mapping) else raw
    if not isinstance(transforms, list):
        return (), (), False, "pred"
    base = "postprocessing#transforms" if isinstance(raw, Mapping) else "postprocessing"
    run: list[Callable[[dict[str, Any]], dict[str, Any]]] = []
    ignored: list[str] = []
    multi_label = False
    key: str | None = None
    for index, item in enumerate(transforms):
        if not isinstance(item, Mapping):
            ignored.append(str(item))
            continue
        target = str(item.get("_target_", "")).rsplit(".", 1)[-1]
        name = target.removesuffix("d").removesuffix("D")
        if name in _POST_NOTHING_TO_DO:
            continue
        if name not in _POST_RUN:
            ignored.append(target or str(item))
            continue
        try:
            transform = parser.get_parsed_content(f"{base}#{index}")
        except Exception as exc:  # any failure of the config's own code
            raise BundleError(
                f"monai-bundle: postprocessing {target} of {config_path} cannot be built: {exc}"
            ) from exc
        if not callable(transform):
            raise BundleError(f"monai-bundle: postprocessing {target} is not callable")
        if hasattr(transform, "allow_missing_keys"):
            transform.allow_missing_keys = True  # keys such as "label" are not there
        sigmoid = getattr(transform, "sigmoid", False)
        if name == "Activations" and any(
            bool(v) for v in (sigmoid if isinstance(sigmoid, tuple | list) else (sigmoid,))
        ):
            multi_label = True
        keys = getattr(transform, "keys", ())
        if keys and key is None:
            key = str(keys[0])
        run.append(transform)
    if ignored:
        LOGGER.warning("monai-bundle: postprocessing not run: %s", ", ".join(ignored))
    return tuple(run), tuple(ignored), multi_label, key or "pred"


def _image_format(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    inputs = _network_format(metadata).get("inputs")
    image = inputs.get("image") if isinstance(inputs, Mapping) else None
    return image if isinstance(image, Mapping) else {}


def _input_shape(metadata: Mapping[str, Any], inferer: Any) -> tuple[int, int, int] | None:
    """The declared spatial shape (``spatial_shape``, else the inferer's ``roi_size``)."""
    for shape in (_image_format(metadata).get("spatial_shape"), getattr(inferer, "roi_size", None)):
        if isinstance(shape, list | tuple) and len(shape) == 3:
            try:
                values = [int(v) for v in shape]
            except (TypeError, ValueError):
                continue  # e.g. "16*n"
            if all(v > 0 for v in values):
                return (values[0], values[1], values[2])
    return None


def _in_channels(metadata: Mapping[str, Any]) -> int:
    channels = _image_format(metadata).get("num_channels")
    return channels if isinstance(channels, int) and channels > 0 else 1
