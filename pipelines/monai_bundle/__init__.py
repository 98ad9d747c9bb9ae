"""``monai-bundle``: run a site's MONAI bundle folder (e.g. ``spleen_ct_segmentation``)."""

from .pipeline import MonaiBundlePipeline

__all__ = ["MonaiBundlePipeline"]
