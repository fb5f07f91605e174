"""Import optional heavy packages where they are used, with an error naming the pip extra."""
from __future__ import annotations

import importlib
from types import ModuleType

from edgeprune.errors import MissingDependencyError

# module name -> the pip extra of edgeprune that installs it
_EXTRAS = {
    "tensorflow": "tflite",
    "onnx2tf": "tflite",
    "ai_edge_litert": "tflite",
    "ai_edge_litert.interpreter": "tflite",
    "paramiko": "ssh",
    "stable_baselines3": "rl",
    "gymnasium": "rl",
}


def require(module: str) -> ModuleType:
    """Import `module`, or raise MissingDependencyError saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRAS.get(module, "all")
        raise MissingDependencyError(
            f"{module} is not installed: pip install 'edgeprune[{extra}]' ({exc})"
        ) from None
