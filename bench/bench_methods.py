"""Search methods side by side, the rows every later method joins: each method compresses
each model (trained on the built-in MNIST) for each target under the latency policy at a
0.5x budget, judged as `compress` judges it (by measurement on the target, interleaved with
the baseline): test accuracy, p50 and its ratio to the baseline benched alongside, MACs,
params, size, search wall time, estimates and target measurements, met.

    python bench/bench_methods.py [--methods adaptive,random] [--archs resnet20,mobilenet_v2]
                                  [--targets x86-ort,emu-rpi4] [--quick] [--workdir DIR]

Emulated targets (emu-rpi4) need root: the bench brings the emulator up and down.
--quick fine-tunes each measured candidate for 1 epoch on 4,000 samples (not 3 on 8,000)
and draws 40 random specs a round (not 120): a smoke run, not figures to compare.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench._common import machine, print_table, write_json  # noqa: E402
from bench.bench_search import checkpoint  # noqa: E402
from edgeprune.compress import CompressConfig, compress  # noqa: E402
from edgeprune.search import EvaluatorConfig, History  # noqa: E402
from edgeprune.targets import emulate, load_target  # noqa: E402

QUICK = {"finetune_epochs": 1, "finetune_samples": 4000}
QUICK_OPTIONS = {"random": {"samples": 40}}


def config(method: str, quick: bool) -> CompressConfig:
    evaluation = EvaluatorConfig(**(QUICK if quick else {}))
    options = QUICK_OPTIONS.get(method, {}) if quick else {}
    return CompressConfig(policy="latency", budget="0.5x", method=method, method_options=dict(options),
                          evaluation=evaluation)


def run_one(arch: str, ckpt_path: Path, target, method: str, quick: bool, out: Path) -> Dict[str, Any]:
    """One compress run, reduced to its row (and the baseline it was judged against)."""
    t = time.time()
    result = compress(ckpt_path, target, config(method, quick), out, progress=False)
    base, final = result["baseline"], result["final"]
    bp50, fp50 = base["measurement"]["latency_ms"]["p50"], final["measurement"]["latency_ms"]["p50"]
    return {"arch": arch, "target": target.name, "method": method, "accuracy": final["accuracy"],
            "baseline_accuracy": base["accuracy"], "p50_ms": fp50, "baseline_p50_ms": bp50, "ratio": fp50 / bp50,
            "macs": final["macs"], "baseline_macs": base["macs"], "params": final["params"],
            "baseline_params": base["params"], "model_bytes": final["model_bytes"],
            "baseline_model_bytes": base["model_bytes"], "source": final["measurement"]["source"],
            "runtime": final["measurement"].get("runtime"), "threads": final["measurement"].get("threads"),
            "runs": final["measurement"].get("runs"), "search_wall_s": result["wall_seconds"],
            "bench_wall_s": round(time.time() - t, 1), "estimates": result["search"]["estimates"],
            "measurements": result["search"]["measurements"], "iterations": result["iterations"],
            "met": result["met"], "reason": result["reason"], "budget_met": result["budget_met"],
            "measured": measured_candidates(out)}


def measured_candidates(out: Path) -> List[dict]:
    """What the method fine-tuned and measured on the way (from the run's history.jsonl)."""
    rows = []
    for c in History.read(out / "history.jsonl").candidates:
        if c.fidelity == "measure" and c.iteration:
            ratio = c.p50_ms / c.baseline_p50_ms if c.p50_ms and c.baseline_p50_ms else None
            rows.append({"iteration": c.iteration, "val_accuracy": c.accuracy, "macs": c.macs, "p50_ms": c.p50_ms,
                         "ratio": ratio, "good": c.good, "met_budget": c.met_budget})
    return rows


def run_target(name: str, archs: Dict[str, Path], methods: List[str], quick: bool, workdir: Path) -> List[dict]:
    """Every arch x method on one target; an emulator this bench started is stopped after."""
    target = load_target(name)
    started = target.emulated and not emulate.status(name)["running"]
    if started:
        emulate.up(target)
    try:
        return [run_one(arch, path, target, method, quick, workdir / f"out-{arch}-{name}-{method}")
                for arch, path in archs.items() for method in methods]
    finally:
        if started:
            emulate.down(name)


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    start = time.time()
    rows: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-methods-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        archs = {}
        for arch in args.archs.split(","):
            checkpoint(arch, workdir)
            archs[arch] = workdir / f"{arch}.pt"
        runs = Path(tempfile.mkdtemp(dir=workdir, prefix="runs-"))  # kept with --workdir
        for name in args.targets.split(","):
            rows += run_target(name, archs, args.methods.split(","), args.quick, runs)
    wall = round(time.time() - start, 1)
    _print(rows)
    print(f"\n{'--quick: ' + str(QUICK) + ', ' + str(QUICK_OPTIONS) + '. ' if args.quick else ''}"
          f"torch threads {args.threads}; wall {wall} s")
    write_json("methods", {"machine": machine(), "settings": vars(args),
                           "quick": {"compress": QUICK, "method_options": QUICK_OPTIONS} if args.quick else None,
                           "rows": rows, "wall_seconds": wall})


def _print(rows: List[dict]) -> None:
    print_table(["model", "target", "method", "test top-1 % (baseline)", "p50 ms (source, runtime)", "x baseline",
                 "MACs", "params", "size bytes", "search s", "estimates", "measurements", "met"],
                [[r["arch"], r["target"], r["method"], f"{r['accuracy']:.2f} ({r['baseline_accuracy']:.2f})",
                  f"{r['p50_ms']:.3f} ({r['source']}, {_runtime(r['runtime'])}, {r['threads']} thr, {r['runs']} runs)",
                  f"{r['ratio']:.3f}", f"{r['macs']:,}", f"{r['params']:,}", f"{r['model_bytes']:,}",
                  r["search_wall_s"], r["estimates"], r["measurements"], r["met"]] for r in rows])
    for r in rows:
        tried = ", ".join(f"{c['val_accuracy']:.1f}% {c['macs'] / 1e6:.1f}M {_ratio(c['ratio'])}"
                          for c in r["measured"])
        print(f"\n{r['arch']} {r['target']} {r['method']}: {r['reason']}; measured (val, MACs, x baseline): {tried}")


def _ratio(ratio: Any) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _runtime(runtime: Any) -> str:
    if isinstance(runtime, dict):
        return f"{runtime.get('name')} {runtime.get('version')}"
    return str(runtime)


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="adaptive,random")
    p.add_argument("--archs", default="resnet20,mobilenet_v2")
    p.add_argument("--targets", default="x86-ort,emu-rpi4")
    p.add_argument("--quick", action="store_true", help="fewer fine-tune epochs and samples (a smoke run)")
    p.add_argument("--workdir", help="keep (and reuse) the trained checkpoints here")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    return p.parse_args()


if __name__ == "__main__":
    main()
