"""Your own CNN through the Python API: train, prune with recovery, export ONNX and TFLite
(fp32 and int8), verify each artifact against PyTorch, and profile on the local x86 target.

    python examples/custom_model.py [--out DIR] [--epochs N] [--samples N]

The factory lives in examples/my_models.py; edgeprune names it `my_models:small_cnn`.
The built-in MNIST is converted to 3x32x32 here, as a stand-in for your own data set (a .npz
with x uint8 0-255 or float 0-1 and y in 0..K-1, or an image folder with one folder a class).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so `my_models` imports

from edgeprune.analysis import analyze
from edgeprune.data import load_dataset
from edgeprune.export import ExportConfig, export, verify
from edgeprune.models import load_model, save_checkpoint
from edgeprune.pruning import PruneConfig, prune
from edgeprune.pruning.recovery import RecoveryConfig, recover
from edgeprune.targets import load_target
from edgeprune.train import TrainConfig, evaluate, train

FACTORY = "my_models:small_cnn"
SHAPE = (3, 32, 32)


def main() -> int:
    args = _args()
    out = Path(args.out or tempfile.mkdtemp(prefix="edgeprune-example-"))
    out.mkdir(parents=True, exist_ok=True)
    data = {s: load_dataset("mnist", s, channels=SHAPE[0], size=SHAPE[1]) for s in ("train", "val", "test")}
    train_set = data["train"].subset(args.samples)

    ckpt = load_model(FACTORY, input_shape=SHAPE)  # random weights: train them first
    cfg = TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adamw", lr=3e-3, progress=False)
    train(ckpt.model, train_set, cfg)
    meta = {"input_shape": list(SHAPE), "num_classes": 10, "dataset": "mnist",
            "accuracy": evaluate(ckpt.model, data["test"])["top1"], "train": cfg.to_dict()}
    save_checkpoint(out / "trained.pt", ckpt.model, FACTORY, {}, meta)
    print(f"trained {FACTORY}: test top-1 {meta['accuracy']:.1f}%")

    teacher = copy.deepcopy(ckpt.model)
    notes: list = []
    prune(ckpt.model, PruneConfig(ratio=0.5, importance="l1", round_to=4),
          ckpt.example_input(), notes=notes)
    recover(ckpt.model, teacher, train_set, meta, RecoveryConfig(epochs=1, progress=False), FACTORY)
    pruned_acc = evaluate(ckpt.model, data["test"])["top1"]
    save_checkpoint(out / "pruned.pt", ckpt.model, FACTORY, {}, {**meta, "accuracy": pruned_acc})
    before, after = analyze(teacher, SHAPE), analyze(ckpt.model, SHAPE)
    print(f"pruned: params {before.params:,} -> {after.params:,}, MACs {before.macs:,} -> {after.macs:,}, "
          f"test top-1 {pruned_acc:.1f}%" + "".join(f"\n  note: {n}" for n in notes))

    # A checkpoint is data: opening it never imports code, so the factory is named here.
    pruned = load_model(FACTORY, weights=out / "pruned.pt")
    failed = 0
    with load_target("x86-ort") as target:
        for fmt in ("onnx", "tflite"):
            for precision in ("fp32", "int8"):
                artifact = export(pruned, ExportConfig(format=fmt, precision=precision),
                                  out / f"pruned-{precision}.{fmt}", data=train_set)
                check = verify(artifact, pruned, data=data["test"].subset(500))
                failed += not check.passed
                line = f"{artifact.name:<20} top-1 agreement {check.top1_agreement:.3f} " \
                       f"{'passed' if check.passed else 'FAILED'}"
                if fmt == "onnx":  # the local target runs onnxruntime
                    line += f"; {target.measure(artifact, runs=50).summary()}"
                print(line)
    print(f"artifacts in {out}")
    return 1 if failed else 0


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="output folder (default: a new temporary folder)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--samples", type=int, default=4000, help="training images used")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
