"""`edgeprune prune`: remove channels by ratio or channel spec, optionally fine-tune."""
from __future__ import annotations

from edgeprune.commands._common import emit_json, log
from edgeprune.commands._model_args import add_model_args


def register(sub) -> None:
    p = sub.add_parser("prune", help="structured channel pruning")
    add_model_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of channels removed from each prunable layer")
    how.add_argument("--spec", help="channel spec JSON: {layer: channels}")
    p.add_argument("--importance", default="l1", help="l1, l2, bn_scale, taylor or activation")
    p.add_argument("--round-to", type=int, default=1, help="keep channel counts at multiples of this")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--calibration-samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="pruned checkpoint to write (.pt)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeprune.commands._model_args import data_for, load_cli_model
    from edgeprune.models import save_checkpoint
    from edgeprune.pruning import PruneConfig, create_importance, load_spec, prune
    from edgeprune.train import evaluate, finetune

    ckpt = load_cli_model(args)
    spec = load_spec(args.spec) if args.spec else None
    cfg = PruneConfig(ratio=args.ratio, spec=spec, importance=args.importance, round_to=args.round_to)
    params_before = sum(p.numel() for p in ckpt.model.parameters())
    test = data_for(ckpt, args.data, "test")
    batches = None
    if create_importance(cfg.importance).needs_data:
        calib = data_for(ckpt, args.data, "train").subset(args.calibration_samples)
        batches = list(calib.loader(64))
    prune(ckpt.model, cfg, ckpt.example_input(), batches)
    if args.finetune_epochs:
        finetune(ckpt.model, data_for(ckpt, args.data, "train"), args.finetune_epochs, seed=args.seed)
    acc = evaluate(ckpt.model, test)
    params_after = sum(p.numel() for p in ckpt.model.parameters())
    meta = {**ckpt.metadata, "accuracy": acc["top1"], "top5": acc["top5"],
            "pruning": {**cfg.to_dict(), "finetune_epochs": args.finetune_epochs,
                        "params_before": params_before}}
    save_checkpoint(args.out, ckpt.model, ckpt.arch, ckpt.arch_kwargs, meta)
    result = {"out": args.out, "params_before": params_before, "params_after": params_after,
              "accuracy": acc["top1"], "top5": acc["top5"], "test_samples": acc["samples"]}
    if args.json:
        emit_json(result)
    else:
        log(f"pruned {ckpt.arch}: {params_before:,} -> {params_after:,} params "
            f"({100 * params_after / params_before:.1f}%)")
        print(f"test top-1 {acc['top1']:.2f}%  top-5 {acc['top5']:.2f}%  ({acc['samples']} samples)  -> {args.out}")
    return 0
