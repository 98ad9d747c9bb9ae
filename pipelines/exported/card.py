"""The model card: what an exported network (TorchScript or ONNX) takes and gives.

A card is a YAML file ``card.yaml`` beside the weights, listed with its
SHA-256 in the model's manifest (``files``), so only a verified card is read::

    task: segmentation            # segmentation | classification | detection
    modalities: [CT]
    input:
      orientation: RAS            # the network's axes (x, y, z); "dicom": columns, rows, slices
      spacing: [1.5, 1.5, 2.0]    # mm along those axes; left out: the series' own
      channels: 1
      shape: [64, 64, 32]         # spatial shape of models check's synthetic input
      normalisation: {kind: range, a_min: -1000, a_max: 1000, b_min: 0, b_max: 1, clip: true}
      sliding_window: {roi_size: [64, 64, 32], overlap: 0.25, sw_batch_size: 1, mode: gaussian}
    output:
      activation: softmax         # softmax | sigmoid | none (segmentation, classification)
      labels:
        1:
          name: liver
          type: {value: "10200004", scheme: SCT, meaning: Liver}
          category: {value: "91723000", scheme: SCT, meaning: Anatomical Structure}
      thresholds: {liver: 0.5}    # per label name: probability (classification),
                                  # score (detection), sigmoid (multi-label segmentation)

:func:`read_card` refuses a card that is not valid with a message naming the
field (``output.labels.1.type.value: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dicomnode.protocol import Code, InputRefused

__all__ = [
    "CARD_NAME",
    "CardCode",
    "CardError",
    "CardInput",
    "CardLabel",
    "CardOutput",
    "ModelCard",
    "Normalisation",
    "SlidingWindow",
    "read_card",
]

CARD_NAME = "card.yaml"
"""The card's file name, in the folder of the weights."""

_WORLD = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
_ANATOMICAL_STRUCTURE = {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"}


class CardError(InputRefused):
    """The card is missing, unverified or not valid.

    An :class:`~dicomnode.protocol.InputRefused`: a retry cannot fix a card,
    so a run ends DEAD at once with this message.
    """


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CardCode(_Model):
    """A coded concept."""

    value: str = Field(min_length=1)
    scheme: str = Field(min_length=1)
    meaning: str = Field(min_length=1)

    @property
    def code(self) -> Code:
        """As a protocol :class:`~dicomnode.protocol.Code`."""
        return Code(self.value, self.scheme, self.meaning)


class CardLabel(_Model):
    """What one output value (segmentation, detection) or class (classification) is."""

    name: str = Field(min_length=1, max_length=64)
    type: CardCode
    category: CardCode = CardCode(**_ANATOMICAL_STRUCTURE)
    region: CardCode | None = None


class Normalisation(_Model):
    """Intensity normalisation before the network.

    ``range``: ``[a_min, a_max]`` to ``[b_min, b_max]`` (clipped if asked),
    as MONAI's ``ScaleIntensityRange``; ``zscore``: zero mean, unit standard
    deviation (over the non-zero voxels if asked); ``none``: as stored (HU
    for CT).
    """

    kind: Literal["range", "zscore", "none"]
    a_min: float | None = None
    a_max: float | None = None
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False
    nonzero: bool = False

    @model_validator(mode="after")
    def _range_has_bounds(self) -> Normalisation:
        if self.kind == "range" and (self.a_min is None or self.a_max is None):
            raise ValueError("kind range needs a_min and a_max")
        if self.kind == "range" and self.a_min == self.a_max:
            raise ValueError("a_min and a_max must differ")
        return self


Size3 = tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]


class SlidingWindow(_Model):
    """MONAI's ``sliding_window_inference`` over the preprocessed volume."""

    roi_size: Size3
    overlap: float = Field(default=0.25, ge=0, lt=1)
    sw_batch_size: int = Field(default=1, ge=1)
    mode: Literal["constant", "gaussian"] = "gaussian"


class CardInput(_Model):
    """The network's input contract."""

    orientation: str = Field(default="RAS", pattern=r"^(dicom|[RLAPSIrlapsi]{3})$")
    spacing: tuple[float, float, float] | None = None
    channels: int = Field(default=1, ge=1)
    shape: Size3 | None = None
    normalisation: Normalisation = Normalisation(kind="none")
    sliding_window: SlidingWindow | None = None

    @model_validator(mode="after")
    def _positive_spacing(self) -> CardInput:
        codes = self.orientation.upper()
        if codes != "DICOM" and len({_WORLD[c] for c in codes}) != 3:
            raise ValueError(f"orientation {self.orientation!r} names a world axis twice")
        if self.spacing is not None and any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive, got {list(self.spacing)}")
        return self

    @property
    def check_shape(self) -> tuple[int, int, int]:
        """Spatial shape of a synthetic input: ``shape``, else the window's."""
        if self.shape is not None:
            return self.shape
        assert self.sliding_window is not None  # the card's validator saw to it
        return self.sliding_window.roi_size


class CardOutput(_Model):
    """What the network gives and what its values mean."""

    activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    labels: dict[Annotated[int, Field(ge=0, le=255)], CardLabel] = Field(min_length=1)
    thresholds: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _thresholds_of_labels(self) -> CardOutput:
        names = [label.name for label in self.labels.values()]
        if len(set(names)) != len(names):
            raise ValueError("two labels have the same name")
        unknown = sorted(set(self.thresholds) - set(names))
        if unknown:
            raise ValueError(f"thresholds of no label: {', '.join(unknown)}")
        return self

    def threshold(self, name: str, default: float) -> float:
        """The threshold of label ``name``, or ``default``."""
        return self.thresholds.get(name, default)


class ModelCard(_Model):
    """The schema of ``card.yaml``."""

    task: Literal["segmentation", "classification", "detection"]
    modalities: tuple[Annotated[str, Field(pattern=r"^[A-Z]{2,3}$")], ...] = Field(min_length=1)
    input: CardInput = CardInput()
    output: CardOutput

    @model_validator(mode="after")
    def _task_fits(self) -> ModelCard:
        if self.input.shape is None and self.input.sliding_window is None:
            raise ValueError("input.shape: needed when there is no input.sliding_window")
        if self.task == "segmentation" and 0 in self.output.labels:
            raise ValueError("output.labels: 0 is the background of a segmentation")
        if self.task == "detection" and self.input.sliding_window is not None:
            raise ValueError("input.sliding_window: a detection network sees the whole volume")
        return self


def read_card(path: Path, verified: frozenset[Path] | None = None) -> ModelCard:
    """Read and check the card at ``path``.

    Parameters
    ----------
    path : Path
        The card.
    verified : frozenset of Path, optional
        The resolved files the runner verified against the manifest; when
        given, a card not among them is refused.

    Raises
    ------
    CardError
        Not verified, missing, not YAML, or not valid; the message names the
        file and each field in error.
    """
    if verified is not None and path.resolve() not in verified:
        raise CardError(
            f"model card {path} is not in the manifest's files; list it with its sha256 "
            "(only verified files are read)"
        )
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CardError(f"model card {path}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise CardError(f"model card {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, Mapping):
        raise CardError(f"model card {path}: must be a mapping (task, modalities, input, output)")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise CardError(f"model card {path}: {problems}") from exc
