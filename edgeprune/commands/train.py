"""`edgeprune train`: train a zoo model or a user's `package.module:factory`; save a checkpoint."""
from __future__ import annotations

import argparse

from edgeprune.commands._common import emit_json, log
from edgeprune.commands._model_args import input_shape_arg
from edgeprune.errors import BadInputError


def register(sub) -> None:
    p = sub.add_parser("train", help="train a zoo model or your own package.module:factory on a data set")
    p.add_argument("--arch", required=True,
                   help="zoo model name (see `edgeprune models`) or package.module:factory "
                        "(called with no arguments)")
    p.add_argument("--data", default="mnist", help="mnist, a .npz file (x, y) or an image folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help="sgd: momentum + one-cycle lr (default for zoo models); "
                        "adamw: warm-up + cosine decay (default for a factory)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: sgd 0.1, adamw 1e-3)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: sgd 5e-4, adamw 0.05")
    p.add_argument("--input-shape", type=input_shape_arg, default=None, metavar="C,H,W",
                   help="the model's input; the data is converted to it (default: the data set's "
                        "own size; a factory's channels come from its first conv)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="input channels (default: the data set's)")
    p.add_argument("--size", type=int, default=None, help="input size in pixels (default: the data set's)")
    p.add_argument("--width", type=float, default=None, help="width multiplier, for zoo families that have one")
    p.add_argument("--train-samples", type=int, default=None,
                   help="use only the first N training samples (quick experiments)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeprune.models import save_checkpoint
    from edgeprune.train import TrainConfig, evaluate, seed_everything, train

    seed_everything(args.seed)  # the initial weights too, so --seed reproduces a run
    native = _load(args.data, "train")
    model, kwargs, shape = _build_model(args, native)
    train_set = _load(args.data, "train", shape, native)
    if args.train_samples:
        train_set = train_set.subset(args.train_samples)
    test_set = _load(args.data, "test", shape, num_classes=train_set.num_classes)
    optimizer = args.optimizer or ("adamw" if ":" in args.arch else "sgd")
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                      optimizer=optimizer, weight_decay=args.weight_decay)
    stats = train(model, train_set, cfg)
    acc = evaluate(model, test_set)
    meta = {"input_shape": list(train_set.input_shape), "num_classes": train_set.num_classes,
            "dataset": str(args.data), "accuracy": acc["top1"], "top5": acc["top5"],
            "train": {**cfg.to_dict(), "seconds": round(stats["seconds"], 1)}}
    save_checkpoint(args.out, model, args.arch, kwargs, meta)
    _report(args, acc, stats, cfg)
    return 0


def _build_model(args: argparse.Namespace, native) -> tuple:
    """(model, arch kwargs, input shape C,H,W): the user's factory with the shape it takes,
    or a zoo model built for the data's shape."""
    from edgeprune.models import create_model, load_model
    from edgeprune.models._checkpoint import is_factory_ref

    if is_factory_ref(args.arch):
        if args.width is not None:
            raise BadInputError("--width is for zoo models; a factory is called with no arguments")
        ckpt = load_model(args.arch, data_shape=native.input_shape)
        return ckpt.model.train(), {}, _shape_asked(args, ckpt.input_shape)
    shape = _shape_asked(args, native.input_shape)
    kwargs = {"num_classes": native.num_classes}
    if args.width is not None:
        kwargs["width"] = int(args.width) if args.width.is_integer() else args.width
    return create_model(args.arch, in_channels=shape[0], input_size=shape[2], **kwargs), kwargs, shape


def _shape_asked(args: argparse.Namespace, default: tuple) -> tuple:
    """--input-shape, else `default` with --channels and --size applied."""
    if args.input_shape:
        return tuple(args.input_shape)
    c, h, w = default
    return (args.channels or c, args.size or h, args.size or w)


def _load(source: str, split: str, shape=None, native=None, num_classes=None):
    """A split converted to `shape` (C, H, W); images are resized to a square size only."""
    from edgeprune.data import load_dataset

    if shape is None:
        return load_dataset(source, split, num_classes=num_classes)
    c, h, w = shape
    if native is not None and tuple(native.input_shape) == tuple(shape):
        return native
    if h != w:
        data = load_dataset(source, split, channels=c, num_classes=num_classes)
        if tuple(data.input_shape[1:]) != (h, w):
            raise BadInputError(f"the data's images are {list(data.input_shape[1:])}; a non-square "
                                f"input shape {list(shape)} needs images of that size")
        return data
    return load_dataset(source, split, channels=c, size=w, num_classes=num_classes)


def _report(args: argparse.Namespace, acc: dict, stats: dict, cfg) -> None:
    result = {"out": args.out, "arch": args.arch, "accuracy": acc["top1"], "top5": acc["top5"],
              "optimizer": cfg.optimizer, "lr": cfg.lr,
              "train_seconds": round(stats["seconds"], 1), "test_samples": acc["samples"]}
    if args.json:
        emit_json(result)
        return
    log(f"trained {args.arch} in {stats['seconds']:.0f} s ({cfg.optimizer}, lr {cfg.lr:g})")
    print(f"test top-1 {acc['top1']:.2f}%  top-5 {acc['top5']:.2f}%  ({acc['samples']} samples)  -> {args.out}")
