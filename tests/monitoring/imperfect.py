"""Deliberately imperfect pipelines for evaluation tests, so scores are not 1.0.

``ErodedLungs`` finds the phantom's lungs exactly and then erodes them by one
pixel in-plane; it finds the body and dilates it by one pixel. ``LungGuess``
calls a study positive by how much lung it sees.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dicomnode.protocol import (
    MORPHOLOGICAL_OPERATIONS_CODE,
    Algorithm,
    Code,
    Finding,
    InputSpec,
    PipelineResult,
    Segment,
    ValidatedRange,
    Volume,
)

ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
LUNG = Code("39607008", "SCT", "Lung")
BODY = Code("38266002", "SCT", "Entire body")
EMPHYSEMA = Code("87433001", "SCT", "Pulmonary emphysema")
IN_PLANE = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool)


def lung_truth(hu: np.ndarray) -> np.ndarray:
    """The phantom's lungs: exactly the voxels at -850 HU."""
    return np.asarray(hu == -850)


def eroded(mask: np.ndarray) -> np.ndarray:
    """``mask`` eroded by one pixel in every slice."""
    return np.asarray(ndimage.binary_erosion(mask, structure=IN_PLANE))


def dilated(mask: np.ndarray) -> np.ndarray:
    """``mask`` dilated by one pixel in every slice."""
    return np.asarray(ndimage.binary_dilation(mask, structure=IN_PLANE))


class ErodedLungs:
    name = "test-eroded-lungs"
    version = "0.1"
    input = InputSpec(modalities=frozenset({"CT"}))
    algorithm = Algorithm(family=MORPHOLOGICAL_OPERATIONS_CODE, trained_model=False)

    def load(self, device: str) -> None:
        pass

    def run(self, volume: Volume, device: str) -> PipelineResult:
        labels = np.zeros(volume.array.shape, dtype=np.uint8)
        labels[dilated(volume.array > -500)] = 2
        labels[eroded(lung_truth(volume.array))] = 1
        return PipelineResult(
            label_map=labels,
            segments=(
                Segment(label=1, name="lungs", category=ANATOMY, type=LUNG),
                Segment(label=2, name="body", category=ANATOMY, type=BODY),
            ),
        )


class LungGuess(ErodedLungs):
    name = "test-lung-guess"

    def run(self, volume: Volume, device: str) -> PipelineResult:
        return PipelineResult(
            findings=(Finding(EMPHYSEMA, lung_probability(volume.array), threshold=0.5),)
        )


def lung_probability(hu: np.ndarray) -> float:
    """A probability that grows with the fraction of lung voxels."""
    fraction = float(lung_truth(hu).mean())
    return float(np.clip(fraction * 8.0, 0.0, 1.0))


class MissesSmallLungs(ErodedLungs):
    """Like :class:`ErodedLungs`, but finds no lungs at all where they are small."""

    name = "test-misses-small-lungs"

    def run(self, volume: Volume, device: str) -> PipelineResult:
        result = super().run(volume, device)
        if lung_truth(volume.array).mean() >= SMALL_LUNGS:
            return result
        assert result.label_map is not None
        labels = np.where(result.label_map == 1, 0, result.label_map).astype(np.uint8)
        return PipelineResult(label_map=labels, segments=result.segments[1:])


class FailsOnSmallLungs(ErodedLungs):
    """Raises where the lungs are small, as a broken model might."""

    name = "test-fails-on-small-lungs"

    def run(self, volume: Volume, device: str) -> PipelineResult:
        if lung_truth(volume.array).mean() < SMALL_LUNGS:
            raise RuntimeError("the model fell over")
        return super().run(volume, device)


#: lung fraction below which only the smallest phantom of the test set lies
SMALL_LUNGS = 0.045


class DilatedLungs(ErodedLungs):
    """The candidate beside :class:`ErodedLungs` in shadow tests: the same
    segments, its lungs dilated by one pixel instead of eroded."""

    name = "test-dilated-lungs"

    def run(self, volume: Volume, device: str) -> PipelineResult:
        labels = np.zeros(volume.array.shape, dtype=np.uint8)
        labels[dilated(volume.array > -500)] = 2
        labels[dilated(lung_truth(volume.array))] = 1
        return PipelineResult(
            label_map=labels, segments=ErodedLungs.run(self, volume, device).segments
        )


class ThinSlicesOnly(ErodedLungs):
    """:class:`ErodedLungs` declaring it was validated on slices 0.5 to 3 mm thick."""

    name = "test-thin-slices"
    input = InputSpec(
        modalities=frozenset({"CT"}), validated=ValidatedRange(slice_thickness_mm=(0.5, 3.0))
    )
