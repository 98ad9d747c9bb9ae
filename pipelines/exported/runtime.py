"""Running an exported network: TorchScript with torch, ONNX with onnxruntime.

Both runtimes take a float32 tensor ``(N, C, X, Y, Z)`` and give what the
network gives: one tensor, or several by name (a detector's ``boxes``,
``scores`` and ``labels``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dicomnode.protocol import InputRefused

__all__ = ["DETECTION_OUTPUTS", "OnnxRuntime", "Output", "Runtime", "TorchScriptRuntime"]

LOGGER = logging.getLogger(__name__)

Output = torch.Tensor | dict[str, torch.Tensor]

DETECTION_OUTPUTS = ("boxes", "scores", "labels")
"""A detector's outputs, by name or in this order."""


class Runtime(Protocol):
    """A loaded network."""

    device: str
    provider: str
    parameters: int

    def __call__(self, batch: torch.Tensor) -> Output:
        """The network's output for ``batch``."""
        ...


def _named(outputs: Sequence[torch.Tensor], names: Sequence[str]) -> Output:
    if len(outputs) == 1:
        return outputs[0]
    if all(name in names for name in DETECTION_OUTPUTS):
        return dict(zip(names, outputs, strict=True))
    return dict(zip(DETECTION_OUTPUTS, outputs, strict=False))


class TorchScriptRuntime:
    """A TorchScript file (``torch.jit.save``), run with torch on ``device``.

    Raises
    ------
    InputRefused
        The file is not TorchScript (the message names it).
    """

    def __init__(self, path: Path, device: str) -> None:
        try:
            module = torch.jit.load(str(path), map_location=torch.device(device))
        except (RuntimeError, ValueError, OSError) as exc:
            raise InputRefused(
                f"torchscript: {path.name} is not a TorchScript file: {exc}"
            ) from exc
        self.module = module.eval()
        self.device = device
        self.provider = f"torch {torch.__version__} ({device})"
        self.parameters = int(sum(p.numel() for p in self.module.parameters()))

    def __call__(self, batch: torch.Tensor) -> Output:
        """Run the module on ``batch`` (moved to the runtime's device)."""
        with torch.inference_mode():
            out = self.module(batch.to(torch.device(self.device)))
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping):
            return {str(k): torch.as_tensor(v) for k, v in out.items()}
        if isinstance(out, tuple | list):
            return _named([torch.as_tensor(v) for v in out], DETECTION_OUTPUTS)
        raise InputRefused(f"torchscript: the network gives {type(out).__name__}, not tensors")

    def to(self, device: str) -> None:
        """Move the module to ``device``."""
        self.module.to(torch.device(device))
        self.device = device
        self.provider = f"torch {torch.__version__} ({device})"


class OnnxRuntime:
    """An ONNX file, run with onnxruntime: CUDA when ``device`` is a GPU and
    onnxruntime has its CUDA provider, else the CPU.

    Raises
    ------
    InputRefused
        onnxruntime is not installed (``pip install dicomnode[onnx]``), or
        the file is not an ONNX model it can run.
    """

    def __init__(self, path: Path, device: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise InputRefused(
                "onnx: onnxruntime is not installed; install the extra: pip install "
                "'dicomnode[onnx]'"
            ) from exc
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = device.partition(":")[2] or "0"
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        elif device.startswith("cuda"):
            LOGGER.warning("onnx: onnxruntime has no CUDA provider here; running on the CPU")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own kinds for a bad file
            raise InputRefused(f"onnx: {path.name} is not an ONNX model: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InputRefused(f"onnx: {path.name} takes {len(inputs)} inputs; it must take one")
        self.input_name = str(inputs[0].name)
        self.output_names = [str(o.name) for o in self.session.get_outputs()]
        self.provider = str(self.session.get_providers()[0])
        self.device = device if self.provider.startswith("CUDA") else "cpu"
        self.parameters = _onnx_parameters(path)

    def __call__(self, batch: torch.Tensor) -> Output:
        """Run the session on ``batch`` (as float32 on the CPU, as onnxruntime takes it)."""
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        try:
            outputs = self.session.run(None, {self.input_name: array})
        except Exception as exc:  # onnxruntime raises its own kinds for a bad input
            raise RuntimeError(f"onnxruntime: {exc}") from exc
        tensors = [torch.as_tensor(np.asarray(o)).to(batch.device) for o in outputs]
        return _named(tensors, self.output_names)

    def to(self, device: str) -> None:
        """Nothing to move: the session stays where it was made."""


def _onnx_parameters(path: Path) -> int:
    """Number of values in the model's initializers (its weights); 0 without ``onnx``."""
    try:
        import onnx
    except ImportError:
        return 0
    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
