"""SNOMED CT codes of the findings the training recipe knows by name.

A manifest carries the code of every label, so the pipeline itself needs no
table; the training script (``models/train_cxr.py``) uses this one when the
command line names a finding without giving its code.
"""

from __future__ import annotations

from dicomnode.protocol import Code

__all__ = ["KNOWN_FINDINGS", "known_finding"]

KNOWN_FINDINGS: dict[str, Code] = {
    "pneumothorax": Code("36118008", "SCT", "Pneumothorax"),
    "nodule": Code("27925004", "SCT", "Nodule"),
    "pleural effusion": Code("60046008", "SCT", "Pleural effusion"),
    "cardiomegaly": Code("8186001", "SCT", "Cardiomegaly"),
}
"""Finding name (lower case, words separated by spaces) to its SNOMED CT code."""


def known_finding(name: str) -> Code | None:
    """The code of a finding named like ``pleural_effusion`` or ``Pleural effusion``."""
    key = " ".join(name.replace("_", " ").replace("-", " ").lower().split())
    return KNOWN_FINDINGS.get(key)
