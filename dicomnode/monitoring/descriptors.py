"""What a run saw and what it said, in a few numbers: the descriptors a drift
check compares.

A run's descriptors are a JSON document with two parts:

``input``
    ``Manufacturer``, ``ManufacturerModelName``, ``ConvolutionKernel`` (text),
    ``KVP``, ``SliceThickness``, ``PixelSpacing`` (the mean of row and column
    spacing), ``SliceSpacing`` (mm), ``intensity_mean`` and ``intensity_std``
    of the volume, and for CT ``histogram``: the fraction of voxels in each of
    32 fixed HU bins (:data:`CT_HU_EDGES`); these three over a regular
    subsample of at most about :data:`SAMPLE_VOXELS` voxels.
``output``
    Per segment ``volume_ml.<name>`` and ``present.<name>`` (1 or 0), per
    finding ``probability.<meaning>``.

Header values are technical ones only; nothing identifies the patient.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from dicomnode.protocol import PipelineResult, Volume

__all__ = [
    "CATEGORICAL",
    "CT_HU_EDGES",
    "NUMERIC_INPUT",
    "describe",
    "describe_input",
    "describe_output",
]

CATEGORICAL = ("Manufacturer", "ManufacturerModelName", "ConvolutionKernel")
"""Header values compared as categories."""

NUMERIC_HEADERS = ("KVP", "SliceThickness")
"""Header values compared as numbers."""

NUMERIC_INPUT = (
    *NUMERIC_HEADERS,
    "PixelSpacing",
    "SliceSpacing",
    "intensity_mean",
    "intensity_std",
)
"""Every numeric input descriptor."""

SAMPLE_VOXELS = 2_000_000
"""Intensity statistics and the histogram are taken over every k-th voxel along
each axis, k the smallest that leaves at most about this many voxels."""

CT_HU_EDGES: tuple[float, ...] = tuple(float(x) for x in np.linspace(-1000.0, 2000.0, 31))
"""Inner edges of the CT histogram's 32 bins: below -1000 HU, 30 bins of 100 HU
up to 2000 HU, and above."""


def _header(path: Path | None) -> dict[str, Any]:
    """The header values of :data:`CATEGORICAL` and :data:`NUMERIC_HEADERS` that ``path`` has."""
    if path is None:
        return {}
    keywords = [*CATEGORICAL, *NUMERIC_HEADERS]
    dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=keywords)
    return {k: dataset.get(k) for k in keywords if dataset.get(k) not in (None, "")}


def describe_input(volume: Volume, first_file: Path | None = None) -> dict[str, object]:
    """Descriptors of a run's input.

    Parameters
    ----------
    volume : Volume
        What the pipeline got.
    first_file : Path, optional
        One instance of the series, for the header values a volume does not
        carry (kernel, kVp, slice thickness).

    Returns
    -------
    dict
        Keyword to value (str, float, or for ``histogram`` a list of floats);
        a header value that is absent or not a number is left out.
    """
    header = _header(first_file)
    found: dict[str, object] = {}
    for keyword in CATEGORICAL:
        value = header.get(keyword, volume.attributes.get(keyword))
        if value is not None:
            text = (
                "\\".join(str(v) for v in value)
                if isinstance(value, MultiValue | list | tuple)
                else str(value)
            )
            if text.strip():
                found[keyword] = text.strip()
    for keyword in NUMERIC_HEADERS:
        element = header.get(keyword)
        if element is not None:
            try:
                number = float(element)
            except (TypeError, ValueError):
                continue
            if np.isfinite(number):
                found[keyword] = number
    found["PixelSpacing"] = (volume.spacing[1] + volume.spacing[2]) / 2
    found["SliceSpacing"] = float(volume.spacing[0])
    # every k-th voxel along each axis, at most about SAMPLE_VOXELS of them
    stride = max(1, math.ceil((volume.array.size / SAMPLE_VOXELS) ** (1 / 3)))
    array = volume.array[::stride, ::stride, ::stride]
    found["intensity_mean"] = float(np.mean(array, dtype=np.float64))
    found["intensity_std"] = float(np.std(array, dtype=np.float64))
    if volume.modality == "CT":
        # the edges are 100 HU apart from -1000: the bin is arithmetic, not a search
        step = CT_HU_EDGES[1] - CT_HU_EDGES[0]
        scaled = np.floor((array.ravel() - np.float32(CT_HU_EDGES[0])) / np.float32(step))
        bins = np.clip(scaled, -1, len(CT_HU_EDGES) - 1).astype(np.int64) + 1
        counts = np.bincount(bins, minlength=len(CT_HU_EDGES) + 1)
        found["histogram"] = [round(float(c) / array.size, 6) for c in counts]
    return found


def describe_output(result: PipelineResult, voxel_volume_ml: float) -> dict[str, float]:
    """Descriptors of a run's output.

    Parameters
    ----------
    result : PipelineResult
        What the pipeline returned.
    voxel_volume_ml : float
        Of the input volume, for segment volumes.

    Returns
    -------
    dict
        ``volume_ml.<segment>``, ``present.<segment>``, ``probability.<finding>``.
    """
    found: dict[str, float] = {}
    if result.label_map is not None and result.segments:
        counts = _label_counts(result.label_map, [segment.label for segment in result.segments])
        for segment in result.segments:
            voxels = counts[segment.label]
            found[f"volume_ml.{segment.name}"] = voxels * voxel_volume_ml
            found[f"present.{segment.name}"] = 1.0 if voxels else 0.0
    for finding in result.findings:
        found[f"probability.{finding.concept.meaning}"] = float(finding.probability)
    return found


#: Up to this many segments, counting each label's voxels by comparison is
#: faster than a histogram of every label (a comparison is a fraction of the
#: histogram's cost, which converts every voxel to a machine integer).
COMPARE_UP_TO = 8


def _label_counts(label_map: np.ndarray, labels: list[int]) -> dict[int, int]:
    """Voxels per label in ``label_map``."""
    if len(labels) <= COMPARE_UP_TO:
        return {label: int(np.count_nonzero(label_map == label)) for label in labels}
    counts = np.zeros(256, dtype=np.int64)
    for plane in label_map:  # a slice at a time: no volume-sized temporary
        counts += np.bincount(plane.ravel(), minlength=256)
    return {label: int(counts[label]) for label in labels}


def describe(volume: Volume, result: PipelineResult, first_file: Path | None = None) -> str:
    """A run's descriptors as the JSON text the job store keeps.

    Parameters
    ----------
    volume, result :
        The run's input and output.
    first_file : Path, optional
        One instance of the input series.

    Returns
    -------
    str
        ``{"input": {...}, "output": {...}}``.
    """
    document = {
        "input": describe_input(volume, first_file),
        "output": describe_output(result, volume.voxel_volume_ml),
    }
    return json.dumps(document, sort_keys=True)
