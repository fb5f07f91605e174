"""Policies against baselines, at the same measured latency budget (0.5x), in one run.

For each model (trained on the built-in MNIST) and target:
  (a) uniform L1 pruning of every layer, ratio tuned by proxy to 0.5x MACs;
  (b) torch-pruning's global magnitude pruning, tuned by proxy to the same MACs;
  (c) edgeprune's latency-sensitive policy, judged by measurement on the target.
(a) and (b) get the same fine-tuning as one (c) candidate (with the same distillation from the
unpruned model), then are exported and benched interleaved with the baseline artifact, as
compress judges (c): each ratio is against the baseline measured in the same window.
Also: the accuracy-critical policy on ResNet-56 (parameter and MAC reduction at 0 drop).

    python bench/bench_compress.py [--models resnet20,mobilenet_v2] [--targets x86-ort,emu-rpi4]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

from _common import machine, print_table, write_json  # noqa: E402
from edgeprune.analysis import analyze  # noqa: E402
from edgeprune.compress import CompressConfig, compress  # noqa: E402
from edgeprune.search import EvaluatorConfig  # noqa: E402
from edgeprune.search.evaluator import AB_ROUNDS  # noqa: E402
from edgeprune.data import load_dataset  # noqa: E402
from edgeprune.export import export_artifact  # noqa: E402
from edgeprune.models import Checkpoint, create_model, save_checkpoint  # noqa: E402
from edgeprune.pruning import PruneConfig, head_layer, prune  # noqa: E402
from edgeprune.targets import emulate, load_target  # noqa: E402
from edgeprune.pruning.recovery import RecoveryConfig, recover  # noqa: E402
from edgeprune.train import TrainConfig, evaluate, train  # noqa: E402

EPOCHS = {"resnet20": 6, "mobilenet_v2": 4, "resnet56": 5}
KWARGS = {"mobilenet_v2": {"width": 0.5}}
SHAPE = (1, 28, 28)


def trained(arch: str, workdir: Path) -> Checkpoint:
    path = workdir / f"{arch}.pt"
    model = create_model(arch, **KWARGS.get(arch, {}))
    t = time.time()
    train(model, load_dataset("mnist", "train"), TrainConfig(epochs=EPOCHS[arch], seed=0, progress=False))
    meta = {"input_shape": list(SHAPE), "num_classes": 10, "dataset": "mnist",
            "train_seconds": round(time.time() - t, 1)}
    save_checkpoint(path, model, arch, KWARGS.get(arch, {}), meta)
    return Checkpoint(model, arch, KWARGS.get(arch, {}), {}, meta)


def macs(model) -> int:
    return analyze(model, SHAPE).macs


def tune(make, goal: float):
    """Bisect a pruning ratio so that MACs land at or just under `goal` (the proxy)."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(10):
        mid = (lo + hi) / 2
        model = make(mid)
        if macs(model) <= goal:
            best, hi = (mid, model), mid
        else:
            lo = mid
    return best


def uniform_l1(ckpt: Checkpoint, goal: float):
    def make(r):
        m = copy.deepcopy(ckpt.model)
        prune(m, PruneConfig(ratio=r, importance="l1"), torch.zeros(1, *SHAPE))
        return m
    return tune(make, goal)


def tp_global(ckpt: Checkpoint, goal: float):
    def make(r):
        m = copy.deepcopy(ckpt.model).eval()
        head = dict(m.named_modules())[head_layer(m)]
        pruner = tp.pruner.MetaPruner(m, torch.zeros(1, *SHAPE), tp.importance.MagnitudeImportance(p=1),
                                      global_pruning=True, pruning_ratio=r, ignored_layers=[head])
        pruner.step()
        return m
    return tune(make, goal)


def measure_row(name, model, ckpt, target, baseline_artifact, seconds, workdir, precision):
    """Export, then bench interleaved with the baseline artifact, as compress judges (c)."""
    test = load_dataset("mnist", "test")
    art = export_artifact(Checkpoint(model, ckpt.arch, {}, {}, ckpt.metadata),
                          workdir / f"{name.split()[0].strip('()')}{baseline_artifact.suffix}",
                          precision=precision, data=load_dataset("mnist", "train").subset(256))
    c = target.compare(baseline_artifact, art, rounds=AB_ROUNDS)
    return {"method": name, "accuracy": evaluate(model, test)["top1"], "p50_ms": c.b.p50_ms,
            "ratio": c.b.p50_ms / c.a.p50_ms, "source": c.b.source, "runtime": c.b.runtime, "macs": macs(model),
            "params": sum(p.numel() for p in model.parameters()), "wall_s": round(seconds, 1),
            "met": c.b.p50_ms <= 0.5 * c.a.p50_ms}


def run_model_target(arch, ckpt, target, workdir, precision):
    rows = []
    t = time.time()
    cfg = CompressConfig(policy="latency", budget="0.5x", evaluation=EvaluatorConfig(precision=precision))
    out = workdir / f"out-{arch}-{target.name}"
    result = compress(workdir / f"{arch}.pt", target, cfg, out, progress=False)
    base_m, final_m = result["baseline"]["measurement"], result["final"]["measurement"]
    base_p50 = base_m["latency_ms"]["p50"]
    rows.append({"method": "baseline", "accuracy": result["baseline"]["accuracy"], "p50_ms": base_p50, "ratio": 1.0,
                 "source": base_m["source"], "runtime": base_m["runtime"], "macs": result["baseline"]["macs"],
                 "params": result["baseline"]["params"], "wall_s": 0.0, "met": None})
    baseline_artifact = out / "candidates" / f"iter-000.{'tflite' if target.runtime == 'tflite' else 'onnx'}"
    goal = 0.5 * result["baseline"]["macs"]
    train_set = load_dataset("mnist", "train")
    a = EvaluatorConfig()  # the recovery every measured candidate gets
    for name, method in (("(a) uniform L1", uniform_l1), ("(b) torch-pruning global", tp_global)):
        t0 = time.time()
        _, model = method(ckpt, goal)
        recover(model, ckpt.model, train_set.subset(a.finetune_samples), ckpt.metadata,
                RecoveryConfig(a.finetune_epochs, None, a.distill, progress=False), ckpt.arch)
        rows.append(measure_row(name, model, ckpt, target, baseline_artifact, time.time() - t0, workdir, precision))
    rows.append({"method": "(c) latency policy", "accuracy": result["final"]["accuracy"],
                 "p50_ms": final_m["latency_ms"]["p50"], "ratio": final_m["latency_ms"]["p50"] / base_p50,
                 "source": final_m["source"], "runtime": final_m["runtime"],
                 "macs": result["final"]["macs"], "params": result["final"]["params"],
                 "wall_s": result["wall_seconds"], "met": result["budget_met"]})
    for r in rows:
        r.update(arch=arch, target=target.name)
    return rows


def accuracy_critical(workdir: Path) -> dict:
    ckpt = trained("resnet56", workdir)
    cfg = CompressConfig(policy="accuracy", tolerance=0.0, method_options={"max_iterations": 8})
    result = compress(workdir / "resnet56.pt", "x86-ort", cfg, workdir / "out-resnet56", progress=False)
    b, f = result["baseline"], result["final"]
    return {"arch": "resnet56", "baseline_accuracy": b["accuracy"], "final_accuracy": f["accuracy"],
            "param_reduction_pct": round(100 * (1 - f["params"] / b["params"]), 2),
            "mac_reduction_pct": round(100 * (1 - f["macs"] / b["macs"]), 2),
            "iterations": result["iterations"], "wall_s": result["wall_seconds"],
            "train_seconds": ckpt.metadata["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet20,mobilenet_v2")
    parser.add_argument("--targets", default="x86-ort,emu-rpi4")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--skip-resnet56", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, extra = [], None
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as tmp:
        workdir = Path(tmp)
        for arch in args.models.split(","):
            ckpt = trained(arch, workdir)
            for name in args.targets.split(","):
                target = load_target(name)
                if target.emulated:
                    emulate.up(target)
                try:
                    rows += run_model_target(arch, ckpt, target, workdir, args.precision)
                finally:
                    if target.emulated:
                        emulate.down(name)
        if not args.skip_resnet56:
            extra = accuracy_critical(workdir)
    print_table(["model", "target", "method", "test top-1 %", "p50 ms (source)", "x baseline", "MACs", "params",
                 "wall s", "meets 0.5x by measurement"],
                [[r["arch"], r["target"], r["method"], f"{r['accuracy']:.2f}",
                  f"{r['p50_ms']:.3f} ({r['source']}, {r['runtime'].get('name')} {r['runtime'].get('version')})",
                  f"{r['ratio']:.3f}",
                  f"{r['macs']:,}", f"{r['params']:,}", r["wall_s"], r["met"]] for r in rows])
    if extra:
        print()
        print_table(["model", "baseline top-1", "final top-1", "params removed %", "MACs removed %", "iterations"],
                    [[extra["arch"], extra["baseline_accuracy"], extra["final_accuracy"],
                      extra["param_reduction_pct"], extra["mac_reduction_pct"], extra["iterations"]]])
    write_json("compress", {"machine": machine(), "precision": args.precision, "rows": rows,
                            "accuracy_critical": extra})


if __name__ == "__main__":
    main()
