"""`edgeprune train`: train a zoo model and save a checkpoint."""
from __future__ import annotations

from edgeprune.commands._common import emit_json, log


def register(sub) -> None:
    p = sub.add_parser("train", help="train a zoo model on a data set")
    p.add_argument("--arch", required=True, help="zoo model name (see `edgeprune models`)")
    p.add_argument("--data", default="mnist", help="mnist, a .npz file (x, y) or an image folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--channels", type=int, choices=(1, 3), default=1)
    p.add_argument("--size", type=int, default=28, help="input size in pixels (28 or 32 for mnist)")
    p.add_argument("--width", type=float, default=None, help="width multiplier, for families that have one")
    p.add_argument("--train-samples", type=int, default=None,
                   help="use only the first N training samples (quick experiments)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeprune.data import load_dataset
    from edgeprune.models import create_model, save_checkpoint
    from edgeprune.train import TrainConfig, evaluate, train

    train_set = load_dataset(args.data, "train", channels=args.channels, size=args.size)
    if args.train_samples:
        train_set = train_set.subset(args.train_samples)
    test_set = load_dataset(args.data, "test", channels=args.channels, size=args.size,
                            num_classes=train_set.num_classes)
    kwargs = {"num_classes": train_set.num_classes}
    if args.width is not None:
        kwargs["width"] = int(args.width) if args.width.is_integer() else args.width
    model = create_model(args.arch, in_channels=args.channels, input_size=args.size, **kwargs)
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr)
    stats = train(model, train_set, cfg)
    acc = evaluate(model, test_set)
    meta = {"input_shape": list(train_set.input_shape), "num_classes": train_set.num_classes,
            "dataset": str(args.data), "accuracy": acc["top1"], "top5": acc["top5"],
            "train": {**cfg.to_dict(), "seconds": round(stats["seconds"], 1)}}
    save_checkpoint(args.out, model, args.arch, kwargs, meta)
    result = {"out": args.out, "arch": args.arch, "accuracy": acc["top1"], "top5": acc["top5"],
              "train_seconds": round(stats["seconds"], 1), "test_samples": acc["samples"]}
    if args.json:
        emit_json(result)
    else:
        log(f"trained {args.arch} in {stats['seconds']:.0f} s")
        print(f"test top-1 {acc['top1']:.2f}%  top-5 {acc['top5']:.2f}%  ({acc['samples']} samples)  -> {args.out}")
    return 0
