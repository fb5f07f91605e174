"""Arguments and loading shared by verbs that take a MODEL and a data set."""
from __future__ import annotations

from typing import Optional



def add_model_args(p, data_help: str = "data set: mnist, a .npz file or an image folder") -> None:
    p.add_argument("model", help="an edgeprune checkpoint (.pt) or package.module:factory")
    p.add_argument("--weights", help="weights for a module:factory model")
    p.add_argument("--data", default=None, help=data_help + " (default: the checkpoint's)")


def load_cli_model(args):
    from edgeprune.models import load_model

    return load_model(args.model, weights=getattr(args, "weights", None))


def data_for(ckpt, source: Optional[str], split: str):
    """The data set for a model, converted to the model's channels and input size."""
    from edgeprune.data import load_dataset

    c, _, size = ckpt.input_shape
    source = source or ckpt.metadata.get("dataset") or "mnist"
    return load_dataset(source, split, channels=c, size=size,
                        num_classes=ckpt.metadata.get("num_classes"))
