"""Models: loading, the adapter table, the loaded-model wrapper."""

from .adapters import FAMILIES, ModelFamily, UnsupportedModelError, family_for
from .loaded import ContextLengthError, LoadedModel, PassCounter
from .loading import DEFAULT_MODEL, GEMMA_MODEL, ModelLoadError, cache_root, load_model, wrap

__all__ = ["FAMILIES", "ModelFamily", "UnsupportedModelError", "family_for", "ContextLengthError", "LoadedModel",
           "PassCounter", "DEFAULT_MODEL", "GEMMA_MODEL", "ModelLoadError", "cache_root", "load_model", "wrap"]
