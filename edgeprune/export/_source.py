"""Turn what users pass (module, checkpoint, path; data set, arrays) into what exporters need."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from edgeprune.errors import BadInputError

Shape = Tuple[int, int, int]


@dataclass
class Source:
    """A model in eval mode with the input shape [C, H, W] it takes."""

    model: nn.Module
    input_shape: Shape
    dataset: Optional[str] = None


@dataclass
class Samples:
    """NCHW float32 inputs and, when known, their integer labels."""

    x: np.ndarray
    y: Optional[np.ndarray] = None


def resolve_model(ref: Any, input_shape: Optional[Sequence[int]] = None,
                  weights: Optional[str] = None) -> Source:
    """Accept an nn.Module, a Checkpoint, or a checkpoint path / `package.module:factory`."""
    if isinstance(ref, (str, Path)):
        from edgeprune.models import load_model

        ref = load_model(str(ref), weights=weights)
    if isinstance(ref, nn.Module):
        if input_shape is None:
            raise BadInputError("a bare nn.Module needs input_shape=[C, H, W]")
        return Source(ref.eval(), _shape(input_shape))
    model = getattr(ref, "model", None)
    if not isinstance(model, nn.Module):
        raise BadInputError(f"not a model or checkpoint: {type(ref).__name__}")
    meta = dict(getattr(ref, "metadata", None) or {})
    shape = input_shape or meta.get("input_shape")
    if shape is None:
        raise BadInputError("the checkpoint has no input_shape in its metadata; pass one")
    return Source(model.eval(), _shape(shape), meta.get("dataset"))


def _shape(shape: Sequence[int]) -> Shape:
    dims = tuple(int(d) for d in shape)
    if len(dims) != 3:
        raise BadInputError(f"input shape must be [C, H, W], got {list(dims)}")
    return dims  # type: ignore[return-value]


def resolve_data(data: Any, input_shape: Shape, limit: Optional[int] = None) -> Samples:
    """Load a data set (name, path, LabeledData, arrays) and check it matches the model."""
    if data is None:
        raise BadInputError("no data: pass a data set (e.g. --data mnist)")
    if isinstance(data, (str, Path)):
        from edgeprune.data import load_dataset

        c, h, w = input_shape
        data = load_dataset(str(data), split="test", channels=c, size=h)
    if hasattr(data, "x"):
        x, y = data.x, getattr(data, "y", None)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        x, y = data, None
    samples = Samples(_as_numpy(x, np.float32), None if y is None else _as_numpy(y, np.int64))
    _check_shape(samples.x, input_shape)
    if limit is not None:
        samples = Samples(samples.x[:limit], None if samples.y is None else samples.y[:limit])
    return samples


def _as_numpy(a: Any, dtype: type) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a), dtype=dtype)


def _check_shape(x: np.ndarray, input_shape: Shape) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(input_shape) or len(x) == 0:
        raise BadInputError(
            f"data of shape {list(x.shape)} does not match the model input "
            f"[N, {', '.join(map(str, input_shape))}]"
        )
