"""Foundation benchmark: ResNet-20 trained on the built-in MNIST (test top-1, wall time) and
params/MACs of every zoo model. Target: ResNet-20 >= 98% test top-1 within 5 minutes on a
2-core machine.

    python bench/bench_foundation.py [--epochs 6]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import machine, print_table, write_json  # noqa: E402
from edgeprune.analysis import analyze  # noqa: E402
from edgeprune.data import load_dataset  # noqa: E402
from edgeprune.models import create_model, list_models  # noqa: E402
from edgeprune.train import TrainConfig, evaluate, train  # noqa: E402


def train_resnet20(epochs: int) -> dict:
    torch.set_num_threads(2)
    model = create_model("resnet20")
    stats = train(model, load_dataset("mnist", "train"), TrainConfig(epochs=epochs, seed=0, progress=False))
    acc = evaluate(model, load_dataset("mnist", "test"))
    return {"arch": "resnet20", "epochs": epochs, "train_seconds": round(stats["seconds"], 1),
            "test_top1": acc["top1"], "test_top5": acc["top5"], "test_samples": acc["samples"],
            "target_top1": 98.0, "target_seconds": 300,
            "met": acc["top1"] >= 98.0 and stats["seconds"] <= 300}


def zoo_table() -> list:
    rows = []
    for name in list_models():
        r = analyze(create_model(name), (1, 28, 28), name)
        rows.append({"arch": name, "params": r.params, "macs": r.macs, "fp32_bytes": r.model_bytes["fp32"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    r20 = train_resnet20(args.epochs)
    print_table(["arch", "epochs", "train s", "test top-1 %", "target", "met"],
                [[r20["arch"], r20["epochs"], r20["train_seconds"], f"{r20['test_top1']:.2f}",
                  ">= 98% in <= 300 s", r20["met"]]])
    print()
    zoo = zoo_table()
    print_table(["model (1x28x28, 10 classes)", "params", "MACs"],
                [[z["arch"], f"{z['params']:,}", f"{z['macs']:,}"] for z in zoo])
    write_json("foundation", {"machine": machine(), "resnet20": r20, "zoo": zoo})


if __name__ == "__main__":
    main()
