"""edgeprune: compress CNNs for edge devices with the device in the loop.

`import edgeprune` is light: it imports nothing heavy until a name is used
(`edgeprune.create_model`, `edgeprune.prune`, ...). TensorFlow, onnx2tf, paramiko and
stable-baselines3 are imported only by the functions that need them.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "create_model": "edgeprune.models", "list_models": "edgeprune.models",
    "load_model": "edgeprune.models", "save_checkpoint": "edgeprune.models",
    "Checkpoint": "edgeprune.models",
    "load_dataset": "edgeprune.data",
    "evaluate": "edgeprune.train", "TrainConfig": "edgeprune.train",
    "finetune": "edgeprune.train",
    "analyze": "edgeprune.analysis",
    "prune": "edgeprune.pruning", "PruneConfig": "edgeprune.pruning",
    "channel_spec": "edgeprune.pruning",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_EXPORTS))
