"""Models: a registry of architectures, and the model directory format."""

from serkit.models.modeldir import SavedModel, load_model, save_model
from serkit.models.registry import SERModel, architectures, build_model, get_architecture

__all__ = ["SERModel", "SavedModel", "architectures", "build_model", "get_architecture", "load_model", "save_model"]
