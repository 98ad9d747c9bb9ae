"""The classifier network and the input contract a manifest declares for it.

A manifest's ``input`` mapping says which network its weights belong to::

    input: {size: 224, in_channels: 1, network: DenseNet121}

``size`` is one number (a square grid) or ``[rows, columns]``; ``in_channels``
is 1, or 3 for weights trained on RGB (the grey image is repeated);
``network`` is one of :data:`NETWORKS`. Other keys are kept for people to read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from monai.networks.nets.densenet import DenseNet, DenseNet121
from torch import nn

__all__ = ["NETWORKS", "TARGET_LAYER", "ModelInput", "build_network"]

TARGET_LAYER = "class_layers.relu"
"""The layer Grad-CAM explains: the last feature maps of a MONAI DenseNet,
after its final batch norm and ReLU, before global pooling."""


def _densenet121(in_channels: int, out_channels: int) -> nn.Module:
    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=out_channels)


def _densenet_tiny(in_channels: int, out_channels: int) -> nn.Module:
    return DenseNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        init_features=8,
        growth_rate=8,
        block_config=(2, 2),
    )


NETWORKS: Mapping[str, Callable[[int, int], nn.Module]] = {
    "DenseNet121": _densenet121,
    "densenet-tiny": _densenet_tiny,
}
"""Network names a manifest may give, to a builder ``(in_channels, out_channels)``."""


@dataclass(frozen=True)
class ModelInput:
    """What the network expects: grid size, channels and architecture.

    Attributes
    ----------
    size : (int, int)
        Rows and columns of the network's input grid.
    in_channels : int
        1 or 3.
    network : str
        A key of :data:`NETWORKS`.
    """

    size: tuple[int, int] = (224, 224)
    in_channels: int = 1
    network: str = "DenseNet121"

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 32:
            raise ValueError(f"input.size must be at least 32 pixels, got {self.size}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"input.in_channels must be 1 or 3, got {self.in_channels}")
        if self.network not in NETWORKS:
            raise ValueError(
                f"input.network {self.network!r} is unknown; known: {', '.join(sorted(NETWORKS))}"
            )

    @classmethod
    def from_manifest(cls, values: Mapping[str, object]) -> ModelInput:
        """Read a manifest's ``input`` mapping (missing keys take the defaults).

        Raises
        ------
        ValueError
            If a value has the wrong type or is out of range; the message names it.
        """
        size: object = values.get("size", 224)
        if isinstance(size, int) and not isinstance(size, bool):
            grid = (size, size)
        elif (
            isinstance(size, list | tuple)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        ):
            grid = (int(size[0]), int(size[1]))
        else:
            raise ValueError(f"input.size must be an integer or [rows, columns], got {size!r}")
        channels = values.get("in_channels", 1)
        if not isinstance(channels, int) or isinstance(channels, bool):
            raise ValueError(f"input.in_channels must be an integer, got {channels!r}")
        network = values.get("network", "DenseNet121")
        if not isinstance(network, str):
            raise ValueError(f"input.network must be a string, got {network!r}")
        return cls(size=grid, in_channels=channels, network=network)


def build_network(spec: ModelInput, out_channels: int) -> nn.Module:
    """A new (untrained) network for ``spec`` with one output per label."""
    if out_channels < 1:
        raise ValueError(f"a classifier needs at least one label, got {out_channels}")
    return NETWORKS[spec.network](spec.in_channels, out_channels)
