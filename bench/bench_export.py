"""Per zoo model: artifact size, host latency (onnxruntime and LiteRT, 1 thread, median of
>= 50 runs) and top-1 agreement with PyTorch, fp32 vs int8. Prints a table, writes JSON.

    python bench/bench_export.py [--models resnet20,vgg11] [--train-steps 100] [--runs 50]

Weights: each model gets one epoch of the SDK's recipe over `--train-steps` batches of 32
built-in MNIST images (0 = untrained): enough for size, latency and agreement, not for accuracy
claims. Latency is a host number, not a device
measurement: for a board, use `edgeprune profile --target`.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from edgeprune.data import load_dataset
from edgeprune.export import ExportConfig, export_many, load_runner, verify
from edgeprune.models import Checkpoint, create_model, list_models
from edgeprune.train import TrainConfig, train

OUT = Path(__file__).resolve().parent / "results" / "export.json"


def brief_train(name: str, data, steps: int) -> Checkpoint:
    """A zoo model after one epoch of the SDK's recipe over `steps` batches of 32 (0: untrained)."""
    torch.manual_seed(0)
    model = create_model(name)
    if steps:
        train(model, data.subset(steps * 32), TrainConfig(epochs=1, batch_size=32, lr=0.05, progress=False))
    meta = {"input_shape": [1, 28, 28], "num_classes": 10, "dataset": "mnist"}
    return Checkpoint(model=model.eval(), arch=name, metadata=meta)


def bench_model(ckpt: Checkpoint, fmt: str, test, work: Path, runs: int, samples: int) -> List[Dict]:
    """Export fp32 and int8 (one conversion for both), then time and verify each artifact."""
    cfgs = {work / f"{ckpt.arch}-{p}.{fmt}": ExportConfig(format=fmt, precision=p, calibration_samples=64)
            for p in ("fp32", "int8")}
    t0 = time.perf_counter()
    paths = export_many(ckpt, cfgs, data=test)
    export_s = time.perf_counter() - t0
    rows = []
    for path, precision in zip(paths, ("fp32", "int8")):
        runner = load_runner(path, threads=1)
        times = runner.time_runs(test.x[:1].numpy(), runs=runs, warmup=10)
        result = verify(path, ckpt, test, samples=samples)
        rows.append({"model": ckpt.arch, "format": fmt, "runtime": runner.runtime, "precision": precision,
                     "bytes": path.stat().st_size, "latency_ms_p50": 1e3 * statistics.median(times),
                     "runs": len(times), "threads": 1, "top1_agreement": result.top1_agreement,
                     "sqnr_db": result.sqnr_db, "accuracy": result.accuracy,
                     "reference_accuracy": result.reference_accuracy, "passed": result.passed,
                     "export_s_both": export_s})
    return rows


def table(rows: List[Dict]) -> str:
    """A fixed-width text table of the results."""
    head = f"{'model':<14}{'fmt':<7}{'prec':<6}{'KiB':>9}{'p50 ms':>9}{'top1 agr':>10}{'SQNR dB':>9}{'acc':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<14}{r['format']:<7}{r['precision']:<6}{r['bytes'] / 1024:>9.1f}"
                     f"{r['latency_ms_p50']:>9.3f}{100 * r['top1_agreement']:>9.1f}%{r['sqnr_db']:>9.1f}"
                     f"{100 * r['accuracy']:>7.1f}%")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(list_models()))
    p.add_argument("--formats", default="onnx,tflite")
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--samples", type=int, default=500, help="verification samples per artifact")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            ckpt = brief_train(name, train, args.train_steps)
            for fmt in args.formats.split(","):
                new = bench_model(ckpt, fmt, test, Path(work), args.runs, args.samples)
                rows.extend(new)
                print("\n".join(table(new).splitlines()[2:]), file=sys.stderr, flush=True)
    print(table(rows))
    meta = {**machine(), "arch": platform.machine(), "train_steps": args.train_steps,
            "weights": "briefly trained", "verify_samples": args.samples,
            "latency": "host, 1 thread, batch 1, median of --runs invokes after 10 warm-up"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
