"""``torchscript`` and ``onnx``: a site's exported network, driven by its model card."""

from .pipeline import OnnxPipeline, TorchScriptPipeline

__all__ = ["OnnxPipeline", "TorchScriptPipeline"]
