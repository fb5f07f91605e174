"""Latency tables built on the target (issue 16): how good are their predictions, what does a
table cost, and how good is the analytic peak-memory estimate?

For each model, target and precision asked for, a table is built (edgeprune.targets.lut,
fresh measurement cache) and checked on SAMPLES random sub-networks (random per-group keep
ratios on the target's channel multiple, random weights: latency needs shapes, not weights).
Each sub-network is benched interleaved with the full model; the prediction is anchored at
the full model's p50 of the same bench, as the Evaluator anchors it at the measured baseline.
The unanchored prediction (the table's absolute figure from the day of the build) is reported
beside it. Peak memory: the analytic estimate (edgeprune/targets/lut/memory.py) fitted on 5
random sub-networks and checked on MEMORY_SAMPLES others, on x86-ort (on its channel multiple).

    .venv/bin/python bench/bench_lut.py [--models resnet20,mobilenet_v2] [--targets x86-ort,emu-rpi4]
                                        [--precisions fp32,int8] [--samples 50] [--memory-samples 20]

emu-rpi4 needs root (cgroups, sshd). Prints a table and writes bench/results/lut.json
(lut-TAG.json with --tag, for a run in parts). Tables are saved after every measurement: with
EDGEPRUNE_CACHE_DIR set to an interrupted run's cache, --resume finishes its tables.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import machine, print_table, write_json  # noqa: E402
from edgeprune.export import export_artifact  # noqa: E402
from edgeprune.models import create_model  # noqa: E402
from edgeprune.targets import emulate, load_target  # noqa: E402
from edgeprune.targets.lut import TableBuilder, sub_network  # noqa: E402
from edgeprune.targets.lut.memory import check_peak_memory  # noqa: E402

MODELS = {"resnet20": (1, 28), "mobilenet_v2": (3, 224)}
MEMORY_FIT = 5


def table_row(arch: str, target, precision: str, samples: int, resume: bool = False) -> dict:
    c, size = MODELS[arch]
    torch.manual_seed(0)
    model = create_model(arch, in_channels=c, input_size=size).eval()
    builder = TableBuilder(model, [c, size, size], target, precision, name=arch,
                           log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    table = builder.build(rebuild=not resume)
    build_s = table.build_seconds  # across the runs of a resumed build
    start = time.time()
    check = builder.check(table, samples)
    return {"model": f"{arch} {c}x{size}x{size}", "target": target.name, "precision": precision,
            "runtime": f"{table.key['runtime']} {table.key['runtime_version']}", "threads": table.key["threads"],
            "channel_multiple": table.key["round_to"], "kernel_kinds": len(table.kernels),
            "measurements": table.measurements, "build_s": round(build_s, 1), "resumed": resume,
            "check_s": round(time.time() - start, 1),
            "fit": {"scale": table.scale, "per_element": table.per_element, "per_weight": table.per_weight,
                    "overhead": table.overhead,
                    "choice": table.fit_choice},
            **{k: check[k] for k in ("samples", "within_10pct", "median_abs_error", "max_abs_error")},
            "unanchored": check["unanchored"], "measured_source": check["measured_source"],
            "peak_memory": check.get("peak_memory"), "memory_model": table.memory, "rows": check["rows"]}


def memory_row(arch: str, target, samples: int, work: Path) -> dict:
    c, size = MODELS[arch]
    torch.manual_seed(0)
    model = create_model(arch, in_channels=c, input_size=size).eval()
    rng = np.random.default_rng(0)
    multiple = target.channel_multiple  # where random search samples, as the latency check does
    paths = [export_artifact(sub_network(model, [c, size, size], rng, round_to=multiple), work / f"{arch}-{i}.onnx",
                             input_shape=[c, size, size]) for i in range(MEMORY_FIT + samples)]
    found = check_peak_memory(target, paths, fit_count=MEMORY_FIT)
    return {**found, "model": f"{arch} {c}x{size}x{size}", "memory_model": found["model"], "target": target.name,
            "channel_multiple": multiple}


def main() -> int:
    args = _args()
    os.environ.setdefault("EDGEPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="edgeprune-bench-lut-"))
    targets = [load_target(t) for t in args.targets.split(",") if t]  # "" : the memory check alone
    rows, memory = [], []
    for target in targets:
        if target.emulated:
            emulate.up(target)
        try:
            for arch in args.models.split(","):
                for precision in args.precisions.split(","):
                    print(f"{arch} on {target.name} at {precision}", file=sys.stderr, flush=True)
                    rows.append(table_row(arch, target, precision, args.samples, args.resume))
        finally:
            if target.emulated:
                emulate.down(target.name)
    if args.memory_samples:
        local = load_target("x86-ort")
        with tempfile.TemporaryDirectory(prefix="edgeprune-bench-lut-mem-") as tmp:
            memory = [memory_row(arch, local, args.memory_samples, Path(tmp)) for arch in args.models.split(",")]
    print_table(["model", "target", "precision", "kinds", "device measurements", "build s",
                 "within +-10% (goal >= 95%)", "median / max error", "unanchored within +-10%"],
                [[r["model"], r["target"], r["precision"], r["kernel_kinds"], r["measurements"], r["build_s"],
                  f"{r['within_10pct']:.0%} of {r['samples']}", f"{r['median_abs_error']:.1%} / {r['max_abs_error']:.1%}",
                  f"{r['unanchored']['within_10pct']:.0%}"] for r in rows])
    if memory:
        print()
        print_table(["model", "target", "peak memory within 20% (goal: all)", "median / max error", "split"],
                    [[m["model"], m["target"], f"{m['within_tolerance']:.0%} of {m['checked']}",
                      f"{m['median_error']:.1%} / {m['max_error']:.1%}", m["split"]] for m in memory])
    write_json("lut" + (f"-{args.tag}" if args.tag else ""),
               {"machine": machine(), "samples": args.samples, "rows": rows, "memory": memory})
    return 0


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenet_v2")
    p.add_argument("--targets", default="x86-ort,emu-rpi4")
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--memory-samples", type=int, default=20)
    p.add_argument("--tag", default="", help="write bench/results/lut-TAG.json (runs in parts)")
    p.add_argument("--resume", action="store_true",
                   help="finish the tables an interrupted run left in $EDGEPRUNE_CACHE_DIR instead of rebuilding")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
