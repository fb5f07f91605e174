"""`edgeprune compress`: prune under a budget MEASURED on the target; export and verify."""
from __future__ import annotations

from edgeprune.commands._common import emit_json, log
from edgeprune.commands._model_args import add_model_args, load_cli_model


def register(sub) -> None:
    p = sub.add_parser("compress", help="compress a model to a latency/memory/accuracy budget on a target")
    add_model_args(p)
    p.add_argument("--target", required=True, help="target name (see `edgeprune targets list`)")
    p.add_argument("--profile", help="a target profile YAML instead of a named target")
    p.add_argument("--policy", required=True, choices=("latency", "memory", "accuracy"))
    p.add_argument("--budget", help="latency: 12ms or 0.5x; memory: 2MB or peak:64MB")
    p.add_argument("--tolerance", type=float, default=None,
                   help="accuracy drop allowed, points (accuracy policy: default 0; others: guard, default 1)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    p.add_argument("--round-to", type=int, help="keep channel counts at multiples of this (default 1)")
    p.add_argument("--ignore", help="layers never pruned, comma-separated names (see `edgeprune analyze`)")
    p.add_argument("--method", default="adaptive", help="search method (see `edgeprune methods`; default adaptive)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the method, e.g. samples=200 for random (repeatable)")
    p.add_argument("--max-iterations", type=int, help="adaptive: candidates tried at most (default 10)")
    p.add_argument("--step", type=float, help="adaptive: λ, threshold increase per iteration (default 0.15)")
    p.add_argument("--finetune-epochs", type=int, help="recovery epochs per candidate (default 3)")
    p.add_argument("--finetune-samples", type=int, help="training images per fine-tune (default 8000)")
    p.add_argument("--finetune-lr", type=float,
                   help="recovery learning rate (default: the checkpoint's optimizer at a reduced rate)")
    p.add_argument("--distill", type=float, help="weight of the unpruned model's soft targets (default 0.5)")
    p.add_argument("--runs", type=int, default=None, help="counted runs per measurement (default: protocol)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-untrained", action="store_true",
                   help="accept a baseline at chance-level accuracy (random weights)")
    p.add_argument("--lut", choices=("auto", "off"), default="auto",
                   help="auto: predict latency with the target's latency table when one was built "
                        "(`edgeprune lut build`); off: the FLOPs proxy (default auto)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run recorded in --out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgeprune.compress import CompressConfig, compress
    from edgeprune.search import EvaluatorConfig
    from edgeprune.targets import load_target

    ckpt = load_cli_model(args)
    target = load_target(args.profile or args.target)
    evaluation = EvaluatorConfig(precision=args.precision, runs=args.runs, finetune_lr=args.finetune_lr,
                                 seed=args.seed, **_evaluation_overrides(args))
    cfg = CompressConfig(policy=args.policy, budget=args.budget, tolerance=args.tolerance, method=args.method,
                         method_options=_method_options(args), data=args.data, evaluation=evaluation,
                         allow_untrained=args.allow_untrained, lut=args.lut)
    result = compress(ckpt, target, cfg, args.out, resume=args.resume)
    if args.json:
        emit_json(result)
    else:
        print_summary(result, args.out)
    return 0 if result["met"] else 1


def _evaluation_overrides(args) -> dict:
    """The recovery and pruning settings given on the command line; the rest keep the defaults."""
    names = ("finetune_epochs", "finetune_samples", "distill", "round_to")
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.ignore:
        given["ignored"] = tuple(name.strip() for name in args.ignore.split(",") if name.strip())
    return given


def _method_options(args) -> dict:
    """--method-option KEY=VALUE pairs (values read as JSON when they parse, else as text), and
    the adaptive method's own flags."""
    import json

    from edgeprune.errors import BadInputError

    options = {}
    for item in args.method_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInputError(f"--method-option takes KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    for flag in ("max_iterations", "step"):
        if getattr(args, flag) is not None:
            options[flag] = getattr(args, flag)
    return options


def print_summary(result: dict, out: str) -> None:
    """Baseline against final, each latency with its provenance."""
    from edgeprune.report import provenance

    b, f = result["baseline"], result["final"]
    verdict = "met" if result["met"] else "NOT met"
    search = result.get("search") or {}
    print(f"{result['policy']} budget {result['budget'] or '-'} on {result['target']}: {verdict} "
          f"after {result['iterations']} candidates ({result['wall_seconds']} s, method {result['method']}: "
          f"{search.get('estimates', 0)} estimates, {search.get('measurements', 0)} measured)")
    print(f"  {result['reason']}")
    for name, s in (("baseline", b), ("final", f)):
        m = s["measurement"]
        print(f"  {name:<8} acc {s['accuracy']:.2f}%  params {s['params']:,}  MACs {s['macs']:,}  "
              f"p50 {m['latency_ms']['p50']:.3f} ms  ({provenance(m)})")
    for fmt, v in result["verifications"].items():
        print(f"  verify {fmt} on {result['target']}: top-1 agreement {v['top1_agreement']:.4f} "
              f"{'passed' if v['passed'] else 'FAILED'}")
    slow = result.get("int8_vs_fp32") or {}
    if slow.get("int8_slower"):
        print(f"  warning: int8 measured {slow['int8_over_fp32']:.2f}x slower than fp32 on {result['target']} "
              f"(baseline p50 {slow['int8_p50_ms']:.3f} vs {slow['fp32_p50_ms']:.3f} ms, {slow['source']})")
    log(f"report: {out}/report.html")
