"""Grad-CAM: where in the image a class's score came from.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization" (ICCV 2017). The same computation as MONAI's
:class:`monai.visualize.GradCAM`, arranged so one forward pass serves the
probabilities of every class and the maps of the positive ones:

* :func:`forward_with_activations` runs the network once and keeps the
  target layer's output ``A`` (``(channels, h, w)`` feature maps);
* :func:`grad_cam` takes the gradient of one class's logit with respect to
  ``A``, averages it over space to get one weight per channel, and returns
  ``ReLU(sum_k weight_k * A_k)`` resized to the input grid and divided by its
  maximum (all zeros when nothing in the image raised the score).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["forward_with_activations", "grad_cam"]


def forward_with_activations(
    network: nn.Module, layer: str, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``network`` on ``batch``; return its logits and ``layer``'s output.

    Call it with gradients enabled when :func:`grad_cam` is to follow.
    """
    target = network.get_submodule(layer)
    kept: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        kept.append(output)

    handle = target.register_forward_hook(keep)
    try:
        logits = network(batch)
    finally:
        handle.remove()
    if len(kept) != 1:
        raise RuntimeError(f"layer {layer!r} ran {len(kept)} times in one forward pass, not once")
    return logits, kept[0]


def grad_cam(
    logits: torch.Tensor,
    activations: torch.Tensor,
    class_index: int,
    grid_shape: tuple[int, int],
    *,
    retain_graph: bool = True,
) -> torch.Tensor:
    """The Grad-CAM map of one class for the first image of the batch.

    Parameters
    ----------
    logits : tensor, (batch, classes)
        From :func:`forward_with_activations`, with a graph.
    activations : tensor, (batch, channels, h, w)
        The target layer's output of that pass.
    class_index : int
    grid_shape : (int, int)
        The input grid the map is resized to (bilinear).
    retain_graph : bool
        Keep the graph for the map of another class.

    Returns
    -------
    tensor of float32, ``grid_shape``, in 0..1 (detached)
    """
    (gradients,) = torch.autograd.grad(
        logits[0, class_index], activations, retain_graph=retain_graph
    )
    weights = gradients[0].mean(dim=(1, 2))
    cam = torch.relu(torch.einsum("k,khw->hw", weights, activations[0].detach()))
    cam = F.interpolate(cam[None, None], size=grid_shape, mode="bilinear", align_corners=False)
    cam = cam[0, 0]
    peak = cam.max()
    if not torch.isfinite(peak) or peak <= 0:
        return torch.zeros(grid_shape, dtype=torch.float32, device=cam.device)
    return (cam / peak).clamp(0.0, 1.0).float()
