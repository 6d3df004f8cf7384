"""textloc: find and use the attention layers that render text in diffusion models."""

from textloc.pipelines import load_pipeline

__all__ = ["load_pipeline"]
__version__ = "0.1.0"
