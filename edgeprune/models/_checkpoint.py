"""Checkpoints: architecture name and kwargs, channel spec, state_dict and metadata.

No pickled classes: a pruned model is rebuilt by creating the architecture, removing
channels down to the saved spec, then loading the weights. `torch.load(weights_only=True)`
reads the file, so a checkpoint cannot run code when opened.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from edgeprune._io import atomic_path
from edgeprune.errors import BadInputError, EdgePruneError
from edgeprune.models._registry import create_model

FORMAT = "edgeprune-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A model with everything needed to rebuild, export and evaluate it."""

    model: nn.Module
    arch: str
    arch_kwargs: Dict[str, Any] = field(default_factory=dict)
    channel_spec: Dict[str, int] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) the model expects."""
        return tuple(self.metadata.get("input_shape", (1, 28, 28)))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def save(self, path: Union[str, Path]) -> None:
        save_checkpoint(path, self.model, self.arch, self.arch_kwargs, self.metadata)


def save_checkpoint(path: Union[str, Path], model: nn.Module, arch: str,
                    arch_kwargs: Optional[Dict[str, Any]] = None,
                    metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write a checkpoint atomically; the channel spec is read off the model."""
    from edgeprune.pruning import channel_spec

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "channel_spec": channel_spec(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Union[str, Path]) -> Checkpoint:
    """Rebuild a model from an edgeprune checkpoint (.pt) of a zoo architecture.

    A checkpoint is data: one saved from a `package.module:factory` is refused here, since
    rebuilding it would import and call whatever module its `arch` field names. The user
    names the factory instead (`load_model("pkg.mod:factory", weights=path)`).
    """
    payload = _read_payload(Path(path))
    arch, kwargs = payload["arch"], payload.get("arch_kwargs", {})
    if ":" in arch:
        raise BadInputError(
            f"{path} was saved from the model factory {arch!r}; opening a checkpoint never imports code, "
            f"so name the factory yourself: MODEL {arch} --weights {path}")
    meta = payload.get("metadata", {})
    model = _build(arch, kwargs, meta)
    return _finish(Checkpoint(model, arch, kwargs, payload.get("channel_spec", {}), meta),
                   payload["state_dict"], str(path))


def load_model(ref: Union[str, Path, nn.Module], weights: Optional[Union[str, Path]] = None,
               input_shape: Optional[Sequence[int]] = None,
               data_shape: Optional[Sequence[int]] = None) -> Checkpoint:
    """Load MODEL as the CLI means it: an edgeprune .pt, or `package.module:factory`.

    A factory is called without arguments; `weights` may be a state_dict file or an
    edgeprune checkpoint of the same architecture. A factory's input shape is, in order:
    `input_shape`, the one recorded in a `weights` checkpoint, or `infer_input_shape`
    from its first conv and `data_shape` (the data set's C, H, W).
    """
    if isinstance(ref, nn.Module):
        shape = input_shape or infer_input_shape(ref, data_shape)
        return Checkpoint(ref.eval(), type(ref).__name__, metadata={"input_shape": list(shape)})
    text = str(ref)
    if is_factory_ref(text):
        return _load_factory(text, weights, input_shape, data_shape)
    ckpt = load_checkpoint(text)
    if input_shape:
        ckpt.metadata["input_shape"] = list(input_shape)
    return ckpt


def reload(path: Union[str, Path], like: Checkpoint) -> Checkpoint:
    """A checkpoint edgeprune wrote for the architecture of `like` (a pruned state, the
    final model): a factory the user already named is called again, nothing else is."""
    if ":" in like.arch:
        return load_model(like.arch, weights=path, input_shape=like.input_shape)
    return load_model(path)


def is_factory_ref(ref: Union[str, Path]) -> bool:
    """True for `package.module:factory`, false for a checkpoint path."""
    text = str(ref)
    return ":" in text and not Path(text).exists()


def infer_input_shape(model: nn.Module, data_shape: Optional[Sequence[int]] = None) -> Tuple[int, int, int]:
    """(C, H, W) for a model that does not say: channels from its first conv, the size from
    the data set, else the model's `input_shape` attribute, else 28 x 28."""
    declared = getattr(model, "input_shape", None)
    declared = tuple(int(d) for d in declared) if declared is not None and len(declared) == 3 else None
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        channels = first_conv.in_channels
    else:
        channels = (declared or data_shape or (1,))[0]
    size = tuple(data_shape[1:]) if data_shape else (declared[1:] if declared else (28, 28))
    return (int(channels), int(size[0]), int(size[1]))


def _read_payload(path: Path) -> Dict[str, Any]:
    if not path.exists():
        raise BadInputError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise BadInputError(f"cannot read {path} as an edgeprune checkpoint: {_load_error(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadInputError(f"{path} is not an edgeprune checkpoint (save one with edgeprune train/prune; "
                            "for a plain state_dict pass package.module:factory --weights FILE)")
    if not isinstance(payload.get("arch"), str) or not isinstance(payload.get("state_dict"), dict):
        raise BadInputError(f"{path} is a damaged edgeprune checkpoint: it lacks its arch or state_dict")
    if payload.get("version", 0) > VERSION:
        raise BadInputError(f"{path} has checkpoint version {payload['version']}; upgrade edgeprune")
    return payload


def _build(arch: str, kwargs: Dict[str, Any], meta: Dict[str, Any]) -> nn.Module:
    shape = meta.get("input_shape", [kwargs.get("in_channels", 1), 28, 28])
    return create_model(arch, **{"in_channels": shape[0], "input_size": shape[-1], **kwargs})


def _finish(ckpt: Checkpoint, state_dict: Dict[str, torch.Tensor], origin: str) -> Checkpoint:
    from edgeprune.pruning import prune_to_spec

    if ckpt.channel_spec:
        try:
            prune_to_spec(ckpt.model, ckpt.channel_spec, ckpt.example_input())
        except EdgePruneError:
            raise
        except Exception as exc:  # surgery on a model the spec was not made for fails anywhere
            raise BadInputError(f"the channel spec in {origin} does not fit {ckpt.arch}: "
                                f"{type(exc).__name__}: {_first_line(exc)}") from None
    state_dict = _strip_prefix(state_dict, ckpt.model.state_dict())
    problem = first_mismatch(ckpt.model.state_dict(), state_dict)
    if problem:
        raise BadInputError(f"weights in {origin} do not match {ckpt.arch}: {problem}")
    try:
        ckpt.model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise BadInputError(f"weights in {origin} do not match {ckpt.arch}: {_first_line(exc)}") from None
    ckpt.model.eval()
    return ckpt


def first_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any]) -> Optional[str]:
    """The first tensor where `given` differs from the model's `expected` state_dict, in words."""
    for name, tensor in expected.items():
        if name not in given:
            return f"tensor {name} {list(tensor.shape)} is missing"
        value = given[name]
        if not isinstance(value, torch.Tensor):
            return f"{name} is a {type(value).__name__}, not a tensor"
        if value.shape != tensor.shape:
            return f"tensor {name} is {list(value.shape)} in the file but {list(tensor.shape)} in the model"
    extra = [k for k in given if k not in expected]
    if extra:
        return f"the file has tensor {extra[0]} that the model lacks ({len(extra)} such)"
    return None


def _strip_prefix(state_dict: Dict[str, Any], expected: Mapping[str, Any]) -> Dict[str, Any]:
    """Accept weights saved from a DataParallel/DDP wrapper (every key `module.`-prefixed)."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys) and not any(k.startswith("module.") for k in expected):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _load_factory(ref: str, weights: Optional[Union[str, Path]], input_shape: Optional[Sequence[int]],
                  data_shape: Optional[Sequence[int]]) -> Checkpoint:
    model = _call_factory(ref)
    payload = _read_weights(Path(weights)) if weights is not None else None
    ckpt = Checkpoint(model.eval(), ref)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        ckpt.channel_spec = payload.get("channel_spec", {})
        ckpt.metadata = dict(payload.get("metadata", {}))
        payload = payload.get("state_dict", {})
    shape = input_shape or ckpt.metadata.get("input_shape") or infer_input_shape(model, data_shape)
    ckpt.metadata["input_shape"] = [int(d) for d in shape]
    return ckpt if payload is None else _finish(ckpt, payload, str(weights))


def _read_weights(path: Path) -> Any:
    if not path.is_file():
        raise BadInputError(f"weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or pickled-model file
        raise BadInputError(f"cannot read weights {path}: {_load_error(exc)} "
                            "(save them with torch.save(model.state_dict(), path))") from None
    if not isinstance(payload, dict):
        raise BadInputError(f"weights {path} hold a {type(payload).__name__}, not a state_dict")
    return payload


def _call_factory(ref: str) -> nn.Module:
    module_name, _, attr = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # the user's module may fail to import in any way
        raise BadInputError(f"cannot load model factory {ref!r}: {type(exc).__name__}: {_first_line(exc)}") from None
    try:
        model = factory()
    except Exception as exc:
        raise BadInputError(f"model factory {ref}() failed (it is called with no arguments): "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise BadInputError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_error(exc: BaseException) -> str:
    """What torch.load's long weights-only message means, in a few words."""
    text = str(exc)
    if isinstance(exc, EOFError) or not text.strip():
        return "the file is empty or cut short"
    reason = text.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in text else ""
    if reason.startswith("Unsupported global"):
        name = reason.split("GLOBAL", 1)[-1].split()[0] if "GLOBAL" in reason else "a class"
        return f"it holds a pickled {name} (a whole model?), not tensors"
    if reason.startswith("Unsupported operand") or "invalid load key" in text or "magic number" in text:
        return "not a PyTorch file, or a corrupt one"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
