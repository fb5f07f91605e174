"""Arguments and loading shared by verbs that take a MODEL and a data set."""
from __future__ import annotations

import argparse
from typing import Optional, Tuple


def add_model_args(p: argparse.ArgumentParser,
                   data_help: str = "data set: mnist, a .npz file or an image folder") -> None:
    """MODEL, --weights, --input-shape and --data, the same for every verb."""
    p.add_argument("model", help="an edgeprune checkpoint (.pt) or package.module:factory")
    p.add_argument("--weights", help="weights for a module:factory model (a state_dict or checkpoint .pt)")
    p.add_argument("--input-shape", type=input_shape_arg, default=None, metavar="C,H,W",
                   help="the input a module:factory model takes (default: its first conv's "
                        "channels and the data set's size)")
    p.add_argument("--data", default=None, help=data_help + " (default: the checkpoint's)")


def input_shape_arg(text: str) -> Tuple[int, int, int]:
    """argparse type for `C,H,W` (also `CxHxW`)."""
    try:
        dims = tuple(int(part) for part in text.lower().replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not C,H,W (for example 3,32,32)")
    return dims  # type: ignore[return-value]


def load_cli_model(args: argparse.Namespace):
    """The Checkpoint for args.model, with --weights and --input-shape (or the shape of
    --data, for a factory that does not say)."""
    from edgeprune.models import load_model
    from edgeprune.models._checkpoint import is_factory_ref

    shape = getattr(args, "input_shape", None)
    data = getattr(args, "data", None)
    data_shape = native_shape(data) if shape is None and data and is_factory_ref(args.model) else None
    return load_model(args.model, weights=getattr(args, "weights", None), input_shape=shape,
                      data_shape=data_shape)


def native_shape(source: str) -> Tuple[int, int, int]:
    """(C, H, W) of a data set's images as stored."""
    from edgeprune.data import load_dataset

    return tuple(load_dataset(source, "test").input_shape)  # type: ignore[return-value]


def data_for(ckpt, source: Optional[str], split: str):
    """The data set for a model, converted to the model's channels and input size."""
    from edgeprune.data import load_dataset

    c, _, size = ckpt.input_shape
    source = source or ckpt.metadata.get("dataset") or "mnist"
    return load_dataset(source, split, channels=c, size=size,
                        num_classes=ckpt.metadata.get("num_classes"))
