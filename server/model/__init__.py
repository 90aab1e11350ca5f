"""Loading the base model: the embedded default (fetched and converted once), a transformers folder or a .gguf."""

from server.model.errors import ModelLoadError
from server.model.loader import LoadedModel, load_model, resolve_model_path
from server.model.placement import resolve_device, resolve_dtype
from server.model.shape import model_shape

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "load_model",
    "model_shape",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
]
