"""Small pipelines for runner tests: one that works, and ones that fail in
every way a real model can (raise, exit the process, hang, bad weights)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import numpy as np

from dicomnode.protocol import (
    MORPHOLOGICAL_OPERATIONS_CODE,
    Algorithm,
    Code,
    InputSpec,
    Measurement,
    ModelFile,
    ModelInfo,
    PipelineResult,
    Segment,
    Volume,
)

ANY = frozenset({"CT", "MR", "DX", "CR", "OT"})
TISSUE = Segment(
    label=1,
    name="dense",
    category=Code("91723000", "SCT", "Anatomical Structure"),
    type=Code("85756007", "SCT", "Tissue"),
)


class Threshold:
    """Labels every voxel above -500 (the phantom's body) and measures their volume."""

    name = "test-threshold"
    version = "0.1"
    input = InputSpec(modalities=ANY)
    algorithm = Algorithm(family=MORPHOLOGICAL_OPERATIONS_CODE, trained_model=False)

    def __init__(self) -> None:
        self.loads = 0

    def load(self, device: str) -> None:
        self.loads += 1

    def run(self, volume: Volume, device: str) -> PipelineResult:
        mask = volume.array > -500
        ml = float(mask.sum()) * volume.voxel_volume_ml
        return PipelineResult(
            label_map=mask.astype(np.uint8),
            segments=(TISSUE,),
            measurements=(
                Measurement(
                    concept=Code("118565006", "SCT", "Volume"),
                    value=ml,
                    unit=Code("mL", "UCUM", "milliliter"),
                    segment_label=1,
                ),
            ),
            summary=f"{ml:.1f} mL above -500 (loaded {self.loads} time(s) in pid {os.getpid()})",
        )


class Raises(Threshold):
    name = "test-raises"

    def run(self, volume: Volume, device: str) -> PipelineResult:
        raise RuntimeError("the model fell over")


class Exits(Threshold):
    name = "test-exits"

    def run(self, volume: Volume, device: str) -> PipelineResult:
        os._exit(3)


class Hangs(Threshold):
    name = "test-hangs"

    def run(self, volume: Volume, device: str) -> PipelineResult:
        time.sleep(3600)
        raise AssertionError("unreachable")


class WithModel(Threshold):
    """Needs the weights described by ``tiny-model.yaml``."""

    name = "test-model"
    required_models = ("tiny-model",)

    def load(self, device: str, models: Mapping[str, ModelFile] | None = None) -> None:  # type: ignore[override]
        assert models is not None
        self.model = models["tiny-model"]
        self.offset = float(self.model.path.read_text())

    def run(self, volume: Volume, device: str) -> PipelineResult:
        result = super().run(volume, device)
        return PipelineResult(
            label_map=result.label_map,
            segments=result.segments,
            measurements=result.measurements,
            models=(ModelInfo(self.model.name, self.model.version, self.model.sha256),),
            summary=f"offset {self.offset}",
        )


class AlsoThreshold(Threshold):
    """Claims a name another plugin has: the registry must refuse it."""

    name = "test-threshold"


class NoAlgorithm:
    """Declares no algorithm family: the registry must refuse to build it."""

    name = "test-no-algorithm"
    version = "0.1"
    input = InputSpec(modalities=ANY)

    def load(self, device: str) -> None:
        pass

    def run(self, volume: Volume, device: str) -> PipelineResult:
        return PipelineResult()


class LooseInput(NoAlgorithm):
    """Declares its input as a tuple of modalities, not an InputSpec."""

    name = "test-loose-input"
    input = ("CT",)  # type: ignore[assignment]
    algorithm = Algorithm(family=MORPHOLOGICAL_OPERATIONS_CODE, trained_model=False)


#: The file :class:`Gated` waits for, when this variable names one.
GATE_ENV = "DICOMNODE_TEST_GATE"


def wait_for_gate(variable: str) -> None:
    """Wait until the file the environment ``variable`` names exists (at most
    600 s); return at once when the variable is unset."""
    gate = os.environ.get(variable)
    if gate:
        deadline = time.monotonic() + 600
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate {gate} stayed closed")
            time.sleep(0.05)


class Gated(Threshold):
    """:class:`Threshold` that first waits until the file ``$DICOMNODE_TEST_GATE``
    exists (when the variable is set): a run that stays RUNNING until a test
    opens the gate, with no sleep to guess."""

    name = "test-gated"

    def run(self, volume: Volume, device: str) -> PipelineResult:
        wait_for_gate(GATE_ENV)
        return super().run(volume, device)


#: The file :class:`LoadGated` waits for in ``load``, when this variable names one.
LOAD_GATE_ENV = "DICOMNODE_TEST_LOAD_GATE"


class LoadGated(Threshold):
    """:class:`Threshold` whose ``load`` waits until the file
    ``$DICOMNODE_TEST_LOAD_GATE`` exists: a worker that stays warming up until
    a test opens the gate."""

    name = "test-load-gated"

    def load(self, device: str) -> None:
        wait_for_gate(LOAD_GATE_ENV)
        super().load(device)
