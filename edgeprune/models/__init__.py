"""The model zoo (a registry, one file per family) and checkpoints."""
from edgeprune.models import alexnet, mobilenet, resnet, squeezenet, vgg  # noqa: F401  (register)
from edgeprune.models._checkpoint import (
    Checkpoint, infer_input_shape, load_checkpoint, load_model, reload, save_checkpoint,
)
from edgeprune.models._registry import create_model, list_models, model_family, register_model

__all__ = [
    "Checkpoint", "create_model", "infer_input_shape", "list_models", "load_checkpoint", "load_model",
    "model_family", "register_model", "reload", "save_checkpoint",
]
