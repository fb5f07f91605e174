"""`edgeprune lut build|check MODEL --target NAME`: latency tables built on the target itself.

build measures each kernel kind of MODEL alone at a grid of channel counts, then the whole
model and a few random sub-networks to fit the per-network overhead; it resumes where an
interrupted build stopped. check measures N random sub-networks and compares them with the
table's predictions (share within +-10% of the measured p50, median and max error); it builds
the table first when there is none.
"""
from __future__ import annotations

import argparse

from edgeprune.commands._common import add_target_args, cli_target, emit_json, log
from edgeprune.commands._model_args import add_model_args, load_cli_model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lut", help="build or check a latency table of a model on a target")
    p.add_argument("action", choices=["build", "check"])
    add_model_args(p)
    add_target_args(p)
    p.add_argument("--precision", default="fp32", help="precision of the kernels measured: fp32, fp16, int8")
    p.add_argument("--round-to", type=int, default=1, help="channel multiple of the grid (default 1)")
    p.add_argument("--samples", type=int, default=50, help="check: random sub-networks measured (default 50)")
    p.add_argument("--seed", type=int, default=1, help="check: seed of the random sub-networks")
    p.add_argument("--rebuild", action="store_true", help="build: measure everything again")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgeprune.errors import BadInputError
    from edgeprune.targets.lut import TableBuilder

    if args.samples < 1 or args.round_to < 1:
        raise BadInputError("--samples and --round-to must be at least 1")
    target = cli_target(args, "lut")
    ckpt = load_cli_model(args)
    name = Path(args.model.split(":")[-1]).stem or ckpt.arch
    builder = TableBuilder(ckpt.model, ckpt.input_shape, target, args.precision, args.round_to, name=name,
                           log=log, progress=True)
    table = builder.build(rebuild=args.rebuild) if args.action == "build" else builder.load() or builder.build()
    if args.action == "build":
        result = {"action": "build", "key": table.key, "kernels": len(table.kernels),
                  "measurements": table.measurements, "build_seconds": round(table.build_seconds, 1),
                  "scale": table.scale, "per_element_ms": table.per_element, "per_weight_ms": table.per_weight,
                  "overhead_ms": table.overhead,
                  "fit_choice": table.fit_choice,
                  "error": table.error(), "peak_memory_model": table.memory}
        emit_json(result) if args.json else print(f"{table.describe()}; built in {table.build_seconds:.0f} s")
        return 0
    log(f"checking {table.describe()} on {args.samples} random sub-networks")
    check = builder.check(table, args.samples, args.seed)
    result = {"action": "check", "key": table.key, "source": "predicted", "measurements": table.measurements,
              **check}
    if args.json:
        emit_json(result)
    else:
        print(f"{target.name}: {check['within_10pct']:.0%} of {check['samples']} sub-networks within +-10% of "
              f"the measured p50 ({check['measured_source']}); median error {check['median_abs_error']:.1%}, "
              f"max {check['max_abs_error']:.1%}")
        memory = check.get("peak_memory")
        if memory:
            print(f"{target.name}: peak-memory estimate {memory['within_tolerance']:.0%} of {memory['checked']} "
                  f"within +-{memory['tolerance']:.0%} of the measured peak; median error "
                  f"{memory['median_error']:.1%}, max {memory['max_error']:.1%}")
    return 0
