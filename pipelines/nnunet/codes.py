"""The site-editable code map: dataset.json label names to coded segment meanings.

A code map is a YAML file::

    labels:
      spleen: {type: {value: "78961009", scheme: SCT, meaning: Spleen}}
      kidney_cyst_left:
        category: {value: "49755003", scheme: SCT, meaning: Morphologically Abnormal Structure}
        type: {value: "367643001", scheme: SCT, meaning: Cyst}
        region: {value: "64033007", scheme: SCT, meaning: Kidney}

``type`` is required, ``category`` defaults to Anatomical Structure,
``region`` is optional, and ``laterality`` (``left`` or ``right``) gives the
side of a paired structure (of the region when there is one). The map shipped
with the pipeline (:data:`TOTALSEGMENTATOR`) covers TotalSegmentator's
structures where a code is certain. A label the map does not hold is never
given an invented code: it becomes a segment named as dataset.json names it,
with category and type Tissue (:data:`UNMAPPED`), and the run's summary lists
it as not coded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dicomnode.protocol import Code, InputRefused

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "SIDES",
    "TISSUE",
    "TOTALSEGMENTATOR",
    "UNMAPPED",
    "CodeMap",
    "CodeMapError",
    "Meaning",
    "read_code_map",
]

TOTALSEGMENTATOR = Path(__file__).with_name("totalsegmentator.yaml")
"""The code map shipped for TotalSegmentator's label names."""

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
SIDES = {"left": Code("7771000", "SCT", "Left"), "right": Code("24028007", "SCT", "Right")}


class CodeMapError(InputRefused):
    """The code map cannot be read or holds an entry that is not a code.

    An :class:`~dicomnode.protocol.InputRefused`: a retry cannot fix a
    configuration, so the run ends DEAD with this message.
    """


@dataclass(frozen=True)
class Meaning:
    """What one label is: category, type, optional anatomic region and side."""

    category: Code
    type: Code
    region: Code | None = None
    mapped: bool = True
    laterality: Code | None = None


UNMAPPED = Meaning(TISSUE, TISSUE, None, mapped=False)
"""The meaning of a label the code map does not hold."""


@dataclass(frozen=True)
class CodeMap:
    """Label names to meanings, read from one file."""

    path: Path
    labels: Mapping[str, Meaning]

    def meaning(self, name: str) -> Meaning:
        """The meaning of ``name``, or :data:`UNMAPPED`."""
        return self.labels.get(name, UNMAPPED)


def _code(value: Any, where: str) -> Code:
    if not isinstance(value, Mapping):
        raise CodeMapError(f"{where}: must be {{value, scheme, meaning}}, got {value!r}")
    unknown = sorted(set(value) - {"value", "scheme", "meaning"})
    if unknown:
        raise CodeMapError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    try:
        return Code(str(value["value"]), str(value["scheme"]), str(value["meaning"]))
    except KeyError as exc:
        raise CodeMapError(f"{where}: no {exc.args[0]}") from exc
    except ValueError as exc:
        raise CodeMapError(f"{where}: {exc}") from exc


def read_code_map(path: Path) -> CodeMap:
    """Read and check the code map at ``path``.

    Raises
    ------
    CodeMapError
        The file is missing, not YAML, or an entry is not a code; the message
        names the file and the entry.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CodeMapError(f"nnunet code map {path}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise CodeMapError(f"nnunet code map {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("labels"), Mapping):
        raise CodeMapError(f"nnunet code map {path}: needs a top-level 'labels' mapping")
    unknown = sorted(set(data) - {"labels"})
    if unknown:
        raise CodeMapError(f"nnunet code map {path}: unknown key(s) {', '.join(map(str, unknown))}")
    labels: dict[str, Meaning] = {}
    for name, entry in data["labels"].items():
        where = f"nnunet code map {path}: labels.{name}"
        if not isinstance(entry, Mapping) or "type" not in entry:
            raise CodeMapError(f"{where}: needs a 'type' code")
        extra = sorted(set(entry) - {"type", "category", "region", "laterality"})
        if extra:
            raise CodeMapError(f"{where}: unknown key(s) {', '.join(map(str, extra))}")
        side = entry.get("laterality")
        if side is not None and side not in SIDES:
            raise CodeMapError(f"{where}.laterality: must be left or right, got {side!r}")
        labels[str(name)] = Meaning(
            category=(
                _code(entry["category"], f"{where}.category")
                if "category" in entry
                else ANATOMICAL_STRUCTURE
            ),
            type=_code(entry["type"], f"{where}.type"),
            region=_code(entry["region"], f"{where}.region") if "region" in entry else None,
            laterality=SIDES[side] if side is not None else None,
        )
    return CodeMap(path, labels)
