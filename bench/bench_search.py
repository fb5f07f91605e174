"""The estimate's speed and its truth, side by side in one run (issue 15).

Speed: the seconds one `estimate` takes (spec applied to the weights, a few distillation steps,
BatchNorm recalibrated, validation top-1, cost computed), for ResNet-20 (1x28x28) and MobileNetV2 (3x32x32), both
trained on the built-in MNIST. Truth: for random specs of ResNet-20 at about half its MACs,
the estimate's accuracy ranked against the accuracy after the `measure` fidelity's recovery
(Spearman), with the raw accuracy (no BN recalibration) as the comparison EagleEye (Li et
al., ECCV 2020) makes: recalibrated BN ranks pruned candidates, raw accuracy does not. The
estimate again at other step counts of its tiny fine-tune (--steps-sweep; 0: BN alone) shows
what the steps buy, with their time.

    python bench/bench_search.py [--specs 20] [--finetune recover|measure] [--finetune-epochs 3]
                                 [--steps 10] [--steps-sweep 0,20] [--bn-samples 512]
                                 [--bn-sweep 128,2048] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import machine, print_table, write_json  # noqa: E402
from edgeprune.analysis import analyze  # noqa: E402
from edgeprune.data import load_dataset  # noqa: E402
from edgeprune.models import Checkpoint, create_model, load_model, save_checkpoint  # noqa: E402
from edgeprune.pruning import channel_spec, group_roots, prune_group_ratios  # noqa: E402
from edgeprune.pruning.recovery import RecoveryConfig, recover  # noqa: E402
from edgeprune.search import Evaluator, EvaluatorConfig, Proposal, Splits, make_policy, parse_budget  # noqa: E402
from edgeprune.targets import load_target  # noqa: E402
from edgeprune.train import TrainConfig, evaluate, recalibrate_bn, train  # noqa: E402

MODELS = {  # arch: (create_model kwargs, input shape, training epochs)
    "resnet20": ({}, (1, 28, 28), 3),
    "mobilenet_v2": ({"width": 0.5}, (3, 32, 32), 2),
}
BAND = (0.45, 0.55)   # a random spec's MACs, as a share of the baseline's
SPREAD = 0.35         # log-normal spread of per-group keep ratios around the level (as methods/random.py)
MIN_KEEP = 0.2        # no group keeps less than this share of its units
MAX_DRAWS = 2000


def trained(arch: str, workdir: Path) -> Checkpoint:
    """The arch trained briefly on the built-in MNIST at its input shape, saved as a checkpoint."""
    kwargs, shape, epochs = MODELS[arch]
    kwargs = {**kwargs, "in_channels": shape[0], "input_size": shape[-1]}
    model = create_model(arch, **kwargs)
    cfg = TrainConfig(epochs=epochs, seed=0, progress=False)
    t = time.time()
    train(model, load_dataset("mnist", "train", channels=shape[0], size=shape[-1]), cfg)
    val = load_dataset("mnist", "val", channels=shape[0], size=shape[-1])
    meta = {"input_shape": list(shape), "num_classes": 10, "dataset": "mnist",
            "accuracy": evaluate(model, val)["top1"], "train": cfg.to_dict(),
            "train_seconds": round(time.time() - t, 1)}
    save_checkpoint(workdir / f"{arch}.pt", model, arch, kwargs, meta)
    return Checkpoint(model.eval(), arch, kwargs, {}, meta)


def make_evaluator(ckpt: Checkpoint, target, out: Path, cfg: EvaluatorConfig) -> Evaluator:
    c, _, size = ckpt.input_shape
    train_set, val, test = (load_dataset("mnist", s, channels=c, size=size) for s in ("train", "val", "test"))
    calibration = list(train_set.subset(cfg.calibration_samples).loader(64))
    policy = make_policy("latency", parse_budget("latency", "0.5x"), None)
    return Evaluator(ckpt, target, out, Splits(train_set, val, test, calibration), policy, cfg)


# --------------------------------------------------------------------------- random specs

def random_specs(ckpt: Checkpoint, n: int, seed: int, spread: float = SPREAD, min_keep: float = MIN_KEEP,
                 band: Tuple[float, float] = BAND) -> List[Tuple[Dict[str, int], int]]:
    """`n` distinct specs with random per-group keep ratios whose MACs fall in `band` of the
    baseline's (rejection sampling, the level nudged toward the band after each miss)."""
    example = ckpt.example_input()
    roots = group_roots(ckpt.model, example)
    base = analyze(ckpt.model, ckpt.input_shape).macs
    rng = np.random.default_rng(seed)
    level, specs, seen = float(np.sqrt(sum(band) / 2)), [], set()
    for _ in range(MAX_DRAWS):
        ratios = np.clip(level * np.exp(rng.normal(0, spread, len(roots))), min_keep, 1.0)
        trial = prune_group_ratios(ckpt.model, dict(zip(roots, ratios.tolist())), example)
        macs = analyze(trial, ckpt.input_shape).macs
        share = macs / base
        if band[0] <= share <= band[1]:
            spec = channel_spec(trial)
            key = tuple(sorted(spec.items()))
            if key not in seen:
                seen.add(key)
                specs.append((spec, macs))
                if len(specs) == n:
                    return specs
        else:
            level *= (sum(band) / 2 / share) ** 0.25
    raise RuntimeError(f"only {len(specs)} of {n} specs landed in {band} of the MACs in {MAX_DRAWS} draws")


# --------------------------------------------------------------------------- statistics

def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties given their mean rank (as scipy.stats.rankdata does)."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        r[tied] = r[tied].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on tie-averaged ranks); scipy's when installed."""
    try:
        from scipy.stats import spearmanr
    except ImportError:
        ra, rb = ranks(a), ranks(b)
        if ra.std() == 0 or rb.std() == 0:
            return float("nan")
        return float(np.corrcoef(ra, rb)[0, 1])
    return float(spearmanr(a, b).statistic)


def quantile(xs: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(xs), q))


# --------------------------------------------------------------------------- the two halves

def estimate_all(ev: Evaluator, specs, first_iteration: int) -> List[dict]:
    """Each spec estimated (timed), with its raw accuracy (no BN recalibration) alongside."""
    rows, base = [], analyze(ev.ckpt.model, ev.ckpt.input_shape).macs
    for i, (spec, _) in enumerate(specs):
        t, cpu = time.perf_counter(), time.process_time()
        c = ev.evaluate(Proposal(spec, "estimate"), first_iteration + i)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        raw = evaluate(ev.apply(Proposal(spec, "estimate")), ev.data.val)["top1"]
        rows.append({"spec": spec, "macs": c.macs, "macs_share": round(c.macs / base, 4),
                     "params": c.params, "estimate_accuracy": c.accuracy, "raw_accuracy": raw,
                     "estimate_seconds": round(seconds, 4), "estimate_cpu_seconds": round(cpu, 4)})
    return rows


def bn_sweep(ev: Evaluator, rows: List[dict], settings: Sequence[int]) -> None:
    """The estimate's accuracy again with other BN-recalibration sample counts (cheap: no fine-tune)."""
    for r in rows:
        r["bn_sweep"] = {}
        for n in settings:
            model = ev.apply(Proposal(r["spec"], "estimate"))
            recalibrate_bn(model, ev.data.train, samples=n)
            r["bn_sweep"][str(n)] = evaluate(model, ev.data.val)["top1"]


def steps_sweep(ev: Evaluator, rows: List[dict], settings: Sequence[int]) -> None:
    """The estimate again (through an Evaluator of its own) at other tiny fine-tune step counts."""
    for n in settings:
        other = Evaluator(ev.ckpt, ev.target, ev.out, ev.data, ev.policy,
                          dataclasses.replace(ev.cfg, estimate_steps=n))
        for i, r in enumerate(rows):
            t = time.perf_counter()
            c = other.evaluate(Proposal(r["spec"], "estimate"), 1 + i)
            r.setdefault("steps_sweep", {})[str(n)] = {"accuracy": c.accuracy,
                                                       "seconds": round(time.perf_counter() - t, 4)}


def finetune_all(ev: Evaluator, rows: List[dict], how: str, target) -> None:
    """The recovery the `measure` fidelity gives (BN recalibration, distillation fine-tune):
    through the Evaluator itself (also exports and measures latency), or recover() directly."""
    cfg = ev.cfg
    if how == "measure":
        with target.session():
            ev.baseline()
            for i, r in enumerate(rows, start=1):
                c = ev.evaluate(Proposal(r["spec"], "measure"), i)
                test = evaluate(ev.load_state(i), ev.data.test)["top1"]
                r.update(finetuned_accuracy=c.accuracy, finetuned_test_accuracy=test, finetune_seconds=c.seconds,
                         p50_ms=c.p50_ms,
                         baseline_p50_ms=c.baseline_p50_ms, source=c.source)
                print(f"  measure {i}: est {r['estimate_accuracy']:.2f} -> {c.accuracy:.2f} "
                      f"({c.seconds:.0f} s)", file=sys.stderr, flush=True)
        return
    for i, r in enumerate(rows, start=1):
        t = time.time()
        val, test = recovered(ev, r["spec"], cfg.seed + i)
        r.update(finetuned_accuracy=val, finetuned_test_accuracy=test, finetune_seconds=round(time.time() - t, 1))
        print(f"  recover {i}: est {r['estimate_accuracy']:.2f} -> {r['finetuned_accuracy']:.2f} "
              f"({r['finetune_seconds']:.0f} s)", file=sys.stderr, flush=True)


def recovered(ev: Evaluator, spec: Dict[str, int], seed: int) -> Tuple[float, float]:
    """(val, test) top-1 of `spec` after the measure fidelity's recovery with `seed` (no export)."""
    cfg = ev.cfg
    model = ev.apply(Proposal(spec, "measure"))
    recover(model, ev.ckpt.model, ev.data.train.subset(cfg.finetune_samples), ev.ckpt.metadata,
            RecoveryConfig(cfg.finetune_epochs, cfg.finetune_lr, cfg.distill, seed, False), ev.ckpt.arch)
    return evaluate(model, ev.data.val)["top1"], evaluate(model, ev.data.test)["top1"]


def speed_row(arch: str, rows: List[dict]) -> dict:
    s, cpu = [r["estimate_seconds"] for r in rows], [r["estimate_cpu_seconds"] for r in rows]
    return {"arch": arch, "median_s": statistics.median(s), "p90_s": quantile(s, 0.9),
            "median_cpu_s": statistics.median(cpu), "n": len(s)}


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    start = time.time()
    cfg = EvaluatorConfig(finetune_epochs=args.finetune_epochs, finetune_samples=args.finetune_samples,
                          estimate_bn_samples=args.bn_samples, estimate_steps=args.steps, seed=args.seed)
    sweep = [int(n) for n in args.bn_sweep.split(",") if n]
    step_settings = [int(n) for n in args.steps_sweep.split(",") if n]
    target = load_target(args.target)
    speed, correlation, per_spec, models = [], None, {}, {}
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-search-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        evaluators = {}
        for arch in args.archs.split(","):  # every timing first, before the long fine-tunes
            ckpt = checkpoint(arch, workdir)
            models[arch] = {"val_accuracy": ckpt.metadata["accuracy"], "train_seconds": ckpt.metadata["train_seconds"],
                            "macs": analyze(ckpt.model, ckpt.input_shape).macs}
            n = args.specs if arch == "resnet20" else args.speed_specs
            evaluators[arch] = make_evaluator(ckpt, target, Path(tempfile.mkdtemp(dir=tmp, prefix=f"out-{arch}-")), cfg)
            specs = random_specs(ckpt, n, args.seed, args.spread, args.min_keep, args.band)
            per_spec[arch] = estimate_all(evaluators[arch], specs, 1)
            speed.append(speed_row(arch, per_spec[arch]))
            print(f"  {arch}: {n} estimates, median {speed[-1]['median_s']:.2f} s", file=sys.stderr, flush=True)
        if "resnet20" in evaluators:
            rows = per_spec["resnet20"]
            bn_sweep(evaluators["resnet20"], rows, sweep)
            steps_sweep(evaluators["resnet20"], rows, step_settings)
            finetune_all(evaluators["resnet20"], rows, args.finetune, target)
            correlation = correlations(rows, cfg, sweep, step_settings)
    wall = round(time.time() - start, 1)
    _print(speed, correlation, per_spec, models, args, cfg, wall)
    write_json(args.out, {"machine": machine(), "settings": vars(args), "evaluator": cfg.to_dict(),
                          "models": models, "speed": speed, "spearman": correlation,
                          "per_spec": per_spec, "wall_seconds": wall})


def checkpoint(arch: str, workdir: Path) -> Checkpoint:
    """The trained checkpoint in `workdir` (a kept --workdir is reused), else trained now."""
    path = workdir / f"{arch}.pt"
    return load_model(path) if path.exists() else trained(arch, workdir)


def correlations(rows: List[dict], cfg: EvaluatorConfig, sweep: Sequence[int], step_settings: Sequence[int]) -> dict:
    """Spearman of each accuracy that costs no fine-tune against the fine-tuned accuracy.

    The truth is the fine-tuned accuracy on val + test (2,000 images): on 1,000 images alone
    the fine-tuned accuracies of specs at one cost (a 2-3 point range) are half noise."""
    truth = [heldout(r) for r in rows]
    out = {"n": len(rows), "truth": "fine-tuned top-1 on val + test",
           "estimate": spearman([r["estimate_accuracy"] for r in rows], truth),
           "raw": spearman([r["raw_accuracy"] for r in rows], truth),
           "macs": spearman([r["macs"] for r in rows], truth), "bn_samples": cfg.estimate_bn_samples,
           "steps": cfg.estimate_steps}
    out["bn_sweep"] = {str(n): spearman([r["bn_sweep"][str(n)] for r in rows], truth) for n in sweep}
    out["steps_sweep"] = {str(n): {"spearman": spearman([r["steps_sweep"][str(n)]["accuracy"] for r in rows], truth),
                                   "median_s": statistics.median(r["steps_sweep"][str(n)]["seconds"] for r in rows)}
                          for n in step_settings}
    out["estimate_vs_val_only"] = spearman([r["estimate_accuracy"] for r in rows],
                                           [r["finetuned_accuracy"] for r in rows])
    out["val_vs_test_finetuned"] = spearman([r["finetuned_accuracy"] for r in rows],
                                            [r["finetuned_test_accuracy"] for r in rows])
    return out


def heldout(row: dict) -> float:
    """A fine-tuned spec's top-1 on val and test together (1,000 images each)."""
    return (row["finetuned_accuracy"] + row["finetuned_test_accuracy"]) / 2


def _print(speed, correlation, per_spec, models, args, cfg, wall) -> None:
    print_table(["model", "val top-1 %", "median estimate s", "p90 s", "median CPU s", "n"],
                [[r["arch"], f"{models[r['arch']]['val_accuracy']:.2f}", f"{r['median_s']:.3f}",
                  f"{r['p90_s']:.3f}", f"{r['median_cpu_s']:.3f}", r["n"]] for r in speed])
    if not correlation:
        print(f"\ntorch threads {args.threads}; wall {wall} s")
        return
    rows = per_spec["resnet20"]
    median_s = next(s for s in speed if s["arch"] == "resnet20")["median_s"]
    table = [[f"estimate ({cfg.estimate_steps} distillation steps of {cfg.estimate_batch}, BN recalibrated on "
              f"{cfg.estimate_bn_samples} images; median {median_s:.2f} s)",
              f"{correlation['estimate']:.3f}", _range(rows, "estimate_accuracy")],
             ["raw (no BN recalibration)", f"{correlation['raw']:.3f}", _range(rows, "raw_accuracy")],
             ["MACs (cost alone)", f"{correlation['macs']:.3f}", "-"]]
    table += [[f"estimate, BN recalibrated on {n} images", f"{rho:.3f}",
               f"{min(r['bn_sweep'][n] for r in rows):.1f}-{max(r['bn_sweep'][n] for r in rows):.1f}"]
              for n, rho in correlation["bn_sweep"].items()]
    for n, found in correlation["steps_sweep"].items():
        accs = [r["steps_sweep"][n]["accuracy"] for r in rows]
        table.append([f"estimate with {n} distillation steps (median {found['median_s']:.2f} s)",
                      f"{found['spearman']:.3f}", f"{min(accs):.1f}-{max(accs):.1f}"])
    table.append(["estimate vs fine-tuned on val only (1,000 images)",
                  f"{correlation['estimate_vs_val_only']:.3f}", "-"])
    table.append(["fine-tuned test vs fine-tuned val (the truth's own noise)",
                  f"{correlation['val_vs_test_finetuned']:.3f}", _range(rows, "finetuned_test_accuracy")])
    xs = [heldout(r) for r in rows]
    table.append(["fine-tuned on val + test (the truth)", "1", f"{min(xs):.1f}-{max(xs):.1f}"])
    print()
    lo, hi = args.band
    print_table([f"ResNet-20, {correlation['n']} random specs at {lo:.0%}-{hi:.0%} of the MACs",
                 "Spearman vs fine-tuned", "top-1 % range"], table)
    how = (f"the Evaluator's measure fidelity on {args.target}" if args.finetune == "measure"
           else "apply + recover() + evaluate (the measure fidelity's recovery, no export)")
    print(f"\nfine-tune: {how}; {cfg.finetune_epochs} epoch(s) on {cfg.finetune_samples} samples, "
          f"distill {cfg.distill}. torch threads {args.threads}; wall {wall} s")


def _range(rows, key) -> str:
    xs = [r[key] for r in rows]
    return f"{min(xs):.1f}-{max(xs):.1f}"


def _band(text: str) -> Tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    if not 0 < lo < hi <= 1:
        raise argparse.ArgumentTypeError(f"a band is LO,HI with 0 < LO < HI <= 1, got {text}")
    return lo, hi


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="resnet20,mobilenet_v2")
    p.add_argument("--specs", type=int, default=20, help="random ResNet-20 specs estimated and fine-tuned")
    p.add_argument("--speed-specs", type=int, default=10, help="specs estimated (speed only) for other archs")
    p.add_argument("--finetune", choices=("measure", "recover"), default="recover",
                   help="recover: the measure fidelity's recovery only; measure: the Evaluator's measure fidelity "
                        "(also exports and measures on --target)")
    p.add_argument("--finetune-epochs", type=int, default=EvaluatorConfig.finetune_epochs,
                   help="recovery epochs (default: the measure fidelity's)")
    p.add_argument("--finetune-samples", type=int, default=EvaluatorConfig.finetune_samples)
    p.add_argument("--band", type=_band, default=BAND, help="the specs' MACs as shares of the baseline's: LO,HI")
    p.add_argument("--spread", type=float, default=SPREAD, help="log-normal spread of the random keep ratios")
    p.add_argument("--min-keep", type=float, default=MIN_KEEP, help="least share of a group's units kept")
    p.add_argument("--bn-samples", type=int, default=EvaluatorConfig.estimate_bn_samples,
                   help="images that recalibrate BatchNorm in an estimate")
    p.add_argument("--bn-sweep", default="128,2048", help="other BN sample counts to rank with (cheap)")
    p.add_argument("--steps", type=int, default=EvaluatorConfig.estimate_steps,
                   help="distillation steps in an estimate (0: BN recalibration alone)")
    p.add_argument("--steps-sweep", default="0,20", help="other estimate step counts to rank with")
    p.add_argument("--target", default="x86-ort")
    p.add_argument("--workdir", help="keep (and reuse) the trained checkpoints here")
    p.add_argument("--out", default="search", help="results file name: bench/results/OUT.json")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


if __name__ == "__main__":
    main()
