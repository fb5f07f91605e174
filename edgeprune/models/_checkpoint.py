"""Checkpoints: architecture name and kwargs, channel spec, state_dict and metadata.

No pickled classes: a pruned model is rebuilt by creating the architecture, removing
channels down to the saved spec, then loading the weights. `torch.load(weights_only=True)`
reads the file, so a checkpoint cannot run code when opened.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from edgeprune._io import atomic_path
from edgeprune.errors import BadInputError
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
    """Rebuild a model from an edgeprune checkpoint (.pt)."""
    payload = _read_payload(Path(path))
    arch, kwargs = payload["arch"], payload.get("arch_kwargs", {})
    meta = payload.get("metadata", {})
    model = _build(arch, kwargs, meta)
    return _finish(Checkpoint(model, arch, kwargs, payload.get("channel_spec", {}), meta),
                   payload["state_dict"], str(path))


def load_model(ref: Union[str, Path, nn.Module], weights: Optional[Union[str, Path]] = None,
               input_shape: Optional[tuple] = None) -> Checkpoint:
    """Load MODEL as the CLI means it: an edgeprune .pt, or `package.module:factory`.

    A factory is called without arguments; `weights` may be a state_dict file or an
    edgeprune checkpoint of the same architecture.
    """
    if isinstance(ref, nn.Module):
        shape = input_shape or getattr(ref, "input_shape", (1, 28, 28))
        return Checkpoint(ref.eval(), type(ref).__name__, metadata={"input_shape": list(shape)})
    text = str(ref)
    if ":" in text and not Path(text).exists():
        return _load_factory(text, weights, input_shape)
    ckpt = load_checkpoint(text)
    if input_shape:
        ckpt.metadata["input_shape"] = list(input_shape)
    return ckpt


def _read_payload(path: Path) -> Dict[str, Any]:
    if not path.exists():
        raise BadInputError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise BadInputError(f"cannot read {path} as an edgeprune checkpoint: {_first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BadInputError(f"{path} is not an edgeprune checkpoint (save with edgeprune train/prune)")
    if payload.get("version", 0) > VERSION:
        raise BadInputError(f"{path} has checkpoint version {payload['version']}; upgrade edgeprune")
    return payload


def _build(arch: str, kwargs: Dict[str, Any], meta: Dict[str, Any]) -> nn.Module:
    shape = meta.get("input_shape", [kwargs.get("in_channels", 1), 28, 28])
    if ":" in arch:
        return _call_factory(arch)
    return create_model(arch, **{"in_channels": shape[0], "input_size": shape[-1], **kwargs})


def _finish(ckpt: Checkpoint, state_dict: Dict[str, torch.Tensor], origin: str) -> Checkpoint:
    from edgeprune.pruning import prune_to_spec

    if ckpt.channel_spec:
        prune_to_spec(ckpt.model, ckpt.channel_spec, ckpt.example_input())
    try:
        ckpt.model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise BadInputError(f"weights in {origin} do not match {ckpt.arch}: {_first_line(exc)}") from None
    ckpt.model.eval()
    return ckpt


def _load_factory(ref: str, weights: Optional[Union[str, Path]], input_shape: Optional[tuple]) -> Checkpoint:
    model = _call_factory(ref)
    shape = list(input_shape or getattr(model, "input_shape", (1, 28, 28)))
    ckpt = Checkpoint(model, ref, {}, {}, {"input_shape": shape})
    if weights is None:
        return ckpt.__class__(model.eval(), ref, {}, {}, ckpt.metadata)
    payload = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        ckpt.channel_spec = payload.get("channel_spec", {})
        ckpt.metadata = {**ckpt.metadata, **payload.get("metadata", {})}
        payload = payload["state_dict"]
    return _finish(ckpt, payload, str(weights))


def _call_factory(ref: str) -> nn.Module:
    module_name, _, attr = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BadInputError(f"cannot load model factory {ref!r}: {exc}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise BadInputError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
