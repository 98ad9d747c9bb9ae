"""``nnunet``: run a site's nnU-Net v2 trained-model folder (e.g. a TotalSegmentator task)."""

from .pipeline import NnUNetPipeline

__all__ = ["NnUNetPipeline"]
