"""``cxr-classify``: multi-label classification of frontal chest radiographs, with Grad-CAM."""

from .pipeline import CXRClassifyPipeline

__all__ = ["CXRClassifyPipeline"]
