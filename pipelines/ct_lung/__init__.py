"""``ct-lung``: classical body, lung and airway segmentation of chest CT, with lung volumetry."""

from .pipeline import CTLungPipeline

__all__ = ["CTLungPipeline"]
