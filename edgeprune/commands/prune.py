"""`edgeprune prune`: remove channels by ratio or channel spec, then recover.

Recovery is on by default: BatchNorm statistics are re-estimated on training images, then
the pruned model is fine-tuned with the unpruned one as a distillation teacher, using the
checkpoint's optimizer family at a reduced learning rate. One-shot pruning at 0.5 without it
leaves a network at chance level.
"""
from __future__ import annotations

from edgeprune.commands._common import emit_json, log
from edgeprune.commands._model_args import add_model_args

DEFAULT_FINETUNE_EPOCHS = 2


def register(sub) -> None:
    p = sub.add_parser("prune", help="structured channel pruning, with recovery fine-tuning")
    add_model_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of channels removed from each prunable layer")
    how.add_argument("--spec", help="channel spec JSON: {layer: channels}")
    p.add_argument("--importance", default="l1", help="l1, l2, bn_scale, taylor or activation")
    p.add_argument("--round-to", type=int, default=1, help="keep channel counts at multiples of this")
    p.add_argument("--ignore", help="layers never pruned, comma-separated names (see `edgeprune analyze`)")
    p.add_argument("--finetune-epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS,
                   help=f"recovery epochs after pruning (default {DEFAULT_FINETUNE_EPOCHS}; 0: none)")
    p.add_argument("--finetune-lr", type=float, help="default: the checkpoint's optimizer at a reduced rate")
    p.add_argument("--distill", type=float, default=0.5, help="weight of the unpruned model's soft targets")
    p.add_argument("--calibration-samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="pruned checkpoint to write (.pt)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import copy

    from edgeprune.commands._model_args import data_for, load_cli_model
    from edgeprune.models import save_checkpoint
    from edgeprune.pruning import PruneConfig, create_importance, load_spec, prune
    from edgeprune.pruning.recovery import RecoveryConfig, recover
    from edgeprune.train import evaluate

    ckpt = load_cli_model(args)
    ignored = tuple(n.strip() for n in (args.ignore or "").split(",") if n.strip())
    cfg = PruneConfig(ratio=args.ratio, spec=load_spec(args.spec) if args.spec else None,
                      importance=args.importance, round_to=args.round_to, ignored=ignored)
    teacher = copy.deepcopy(ckpt.model).eval()
    params_before = sum(p.numel() for p in ckpt.model.parameters())
    train_set, test = data_for(ckpt, args.data, "train"), data_for(ckpt, args.data, "test")
    batches = None
    if create_importance(cfg.importance).needs_data:
        batches = list(train_set.subset(args.calibration_samples).loader(64))
    notes: list = []
    prune(ckpt.model, cfg, ckpt.example_input(), batches, notes=notes)
    for note in notes:
        log(f"note: {note}")
    recovery = recover(ckpt.model, teacher, train_set, ckpt.metadata,
                       RecoveryConfig(args.finetune_epochs, args.finetune_lr, args.distill, args.seed), ckpt.arch)
    acc = evaluate(ckpt.model, test)
    params_after = sum(p.numel() for p in ckpt.model.parameters())
    meta = {**ckpt.metadata, "accuracy": acc["top1"], "top5": acc["top5"],
            "pruning": {**cfg.to_dict(), **recovery, "params_before": params_before, "notes": notes}}
    save_checkpoint(args.out, ckpt.model, ckpt.arch, ckpt.arch_kwargs, meta)
    result = {"out": args.out, "params_before": params_before, "params_after": params_after,
              "accuracy": acc["top1"], "top5": acc["top5"], "test_samples": acc["samples"],
              "recovery": recovery, "notes": notes}
    if args.json:
        emit_json(result)
    else:
        log(f"pruned {ckpt.arch}: {params_before:,} -> {params_after:,} params "
            f"({100 * params_after / params_before:.1f}%)")
        print(f"test top-1 {acc['top1']:.2f}%  top-5 {acc['top5']:.2f}%  ({acc['samples']} samples)  -> {args.out}")
    return 0
