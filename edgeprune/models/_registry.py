"""The model registry: `create_model("resnet20")` and `list_models("resnet*")`."""
from __future__ import annotations

import fnmatch
from typing import Callable, Dict, List

from torch import nn

from edgeprune.errors import BadInputError

_FACTORIES: Dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: Dict[str, str] = {}


def register_model(family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: add a factory to the zoo under its function name."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _FACTORIES[factory.__name__] = factory
        _FAMILIES[factory.__name__] = family
        return factory

    return wrap


def list_models(pattern: str = "*") -> List[str]:
    """Names in the zoo matching a shell-style pattern, sorted."""
    return sorted(name for name in _FACTORIES if fnmatch.fnmatch(name, pattern))


def model_family(name: str) -> str:
    """The family (file) a zoo model belongs to."""
    _check_name(name)
    return _FAMILIES[name]


def create_model(
    name: str, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, **kwargs
) -> nn.Module:
    """Build a zoo model by name; input channels, classes and input size are parameters."""
    _check_name(name)
    if in_channels < 1 or num_classes < 2 or input_size < 8:
        raise BadInputError(
            f"bad model shape: in_channels={in_channels}, num_classes={num_classes}, "
            f"input_size={input_size} (need >=1, >=2, >=8)"
        )
    try:
        return _FACTORIES[name](
            in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs
        )
    except TypeError as exc:
        raise BadInputError(f"bad arguments for model {name!r}: {exc}") from None


def _check_name(name: str) -> None:
    if name not in _FACTORIES:
        raise BadInputError(f"unknown model {name!r}; known: {', '.join(list_models())}")
