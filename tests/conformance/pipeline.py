"""One conformance run of a model family, through the Python API as a user would drive it:
quick train at 3x32x32, `prune --ratio 0.5` with two criteria (with recovery), export ONNX and
TFLite at fp32 and int8, verify each against PyTorch, profile on x86-ort.

The test suite (test_conformance.py) asserts on the returned record; bench/bench_conformance.py
prints it as the family x step table.
"""
from __future__ import annotations

import copy
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

SHAPE = (3, 32, 32)
CRITERIA = ("l1", "activation")
ARTIFACTS = (("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"))
ZOO = {"resnet20": {"width": 8}, "mobilenet_v2": {"width": 0.5}}
FAMILY_MODULE = "tests.conformance.families"
TRAIN_TARGET = 92.0   # test top-1 a quick train aims at: int8 agreement needs confident logits
EXTRA_ROUNDS = 2
RECOVERY_EPOCHS = 2  # on the training images, lr rewound to the training rate (train.finetune_recipe)


def family_refs() -> Dict[str, str]:
    """Architecture reference of every conformance family: zoo names and module:factory."""
    from tests.conformance.families import FAMILIES

    return {**{f"zoo-{name}": name for name in ZOO}, **{name: f"{FAMILY_MODULE}:{name}" for name in FAMILIES}}


def run_family(name: str, work: Path, epochs: int = 1, samples: int = 6000, test_samples: int = 1000,
               seed: int = 0, recover_all: bool = True) -> Dict[str, Any]:
    """Every step for one family; each step records its figures or the one-line error it raised.
    Without `recover_all` only the first criterion's pruned model is fine-tuned (the one that is
    exported); the others get BatchNorm recalibration only, which is enough to show the surgery."""
    from edgeprune.data import load_dataset

    work.mkdir(parents=True, exist_ok=True)
    train_set = load_dataset("mnist", "train", channels=SHAPE[0], size=SHAPE[1]).subset(samples)
    test_set = load_dataset("mnist", "test", channels=SHAPE[0], size=SHAPE[1]).subset(test_samples)
    val_set = load_dataset("mnist", "val", channels=SHAPE[0], size=SHAPE[1])  # int8's check images
    record: Dict[str, Any] = {"family": name, "arch": family_refs()[name], "steps": {}}
    steps = record["steps"]
    ckpt_path = work / f"{name}.pt"
    steps["train"] = _step(lambda: _train(record["arch"], ckpt_path, train_set, test_set, epochs, seed))
    if not steps["train"]["ok"]:
        return record
    for criterion in CRITERIA:
        recovery = RECOVERY_EPOCHS if recover_all or criterion == CRITERIA[0] else 0
        steps[f"prune-{criterion}"] = _step(
            lambda: _prune(record["arch"], ckpt_path, work / f"{name}-{criterion}.pt", criterion,
                           train_set, test_set, seed, recovery))
    pruned = work / f"{name}-{CRITERIA[0]}.pt"
    if not steps[f"prune-{CRITERIA[0]}"]["ok"]:
        return record
    model = _load(record["arch"], pruned)
    outs = {(fmt, precision): work / f"{name}-{precision}.{fmt}" for fmt, precision in ARTIFACTS}
    made = _step(lambda: _export_all(model, outs, train_set, val_set))
    for (fmt, precision), out in outs.items():
        steps[f"{fmt}-{precision}"] = _step(
            lambda: _verify(model, out, test_set) if made["ok"] else _export_verify(model, out, fmt, precision,
                                                                                      train_set, val_set, test_set))
    steps["export"] = made  # the shared conversion; each artifact's step adds its verification
    steps["profile"] = _step(lambda: _profile(work / f"{name}-fp32.onnx", work / f"{name}-int8.onnx"))
    return record


def _step(fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    start = time.time()
    try:
        out = {"ok": True, **fn()}
    except Exception as exc:  # recorded, not raised: the table shows every failing step
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
               "traceback": traceback.format_exc()}
    out["seconds"] = round(time.time() - start, 1)
    return out


def _train(arch: str, path: Path, train_set, test_set, epochs: int, seed: int) -> Dict[str, Any]:
    from edgeprune.models import create_model, load_model, save_checkpoint
    from edgeprune.train import TrainConfig, evaluate, train

    if ":" in arch:
        model, kwargs = load_model(arch, input_shape=SHAPE).model, {}
        cfg = TrainConfig(epochs=epochs, batch_size=32, optimizer="adamw", lr=3e-3, seed=seed, progress=False)
    else:
        kwargs = ZOO[arch]
        model = create_model(arch, in_channels=SHAPE[0], input_size=SHAPE[1], **kwargs)
        cfg = TrainConfig(epochs=epochs, batch_size=32, seed=seed, progress=False)
    train(model, train_set, cfg)
    acc = evaluate(model, test_set)["top1"]
    for _ in range(EXTRA_ROUNDS):  # slow starters (LayerNorm nets) get more, at a lower rate
        if acc >= TRAIN_TARGET:
            break
        cfg = TrainConfig(**{**cfg.to_dict(), "epochs": 2 * epochs, "lr": cfg.lr / 2})
        train(model, train_set, cfg)
        acc = evaluate(model, test_set)["top1"]
    meta = {"input_shape": list(SHAPE), "num_classes": 10, "dataset": "mnist", "accuracy": acc,
            "train": cfg.to_dict()}
    save_checkpoint(path, model, arch, kwargs, meta)
    return {"accuracy": acc, "params": sum(p.numel() for p in model.parameters()), "optimizer": cfg.optimizer}


def _load(arch: str, path: Path):
    """A checkpoint of `arch`: a factory is named by us, never read from the file."""
    from edgeprune.models import load_model

    return load_model(arch, weights=path) if ":" in arch else load_model(path)


def _prune(arch: str, src: Path, dst: Path, criterion: str, train_set, test_set, seed: int,
           epochs: int) -> Dict[str, Any]:
    from edgeprune.models import save_checkpoint
    from edgeprune.pruning import PruneConfig, prune
    from edgeprune.pruning.recovery import RecoveryConfig, recover
    from edgeprune.train import evaluate

    ckpt = _load(arch, src)
    teacher = copy.deepcopy(ckpt.model)
    before = sum(p.numel() for p in ckpt.model.parameters())
    notes: List[str] = []
    calibration = list(train_set.subset(256).loader(64))
    prune(ckpt.model, PruneConfig(ratio=0.5, importance=criterion), ckpt.example_input(), calibration, notes=notes)
    recover(ckpt.model, teacher, train_set, ckpt.metadata, RecoveryConfig(epochs=epochs, seed=seed, progress=False), ckpt.arch)
    acc = evaluate(ckpt.model, test_set)["top1"]
    save_checkpoint(dst, ckpt.model, ckpt.arch, ckpt.arch_kwargs, {**ckpt.metadata, "accuracy": acc})
    reloaded = _load(arch, dst)  # the channel spec must rebuild the pruned graph exactly
    after = sum(p.numel() for p in reloaded.model.parameters())
    return {"accuracy": acc, "params_before": before, "params_after": after, "finetune_epochs": epochs,
            "params_kept": round(after / before, 3), "notes": notes}


def _export_all(model, outs: Dict[tuple, Path], train_set, val_set) -> Dict[str, Any]:
    """The four artifacts from one export_many call: one ONNX graph and one onnx2tf conversion
    for both TFLite precisions (int8 calibrates on 128 images of train_set; its fallback checks
    512 of val_set, images the model did not train on)."""
    from edgeprune.export import ExportConfig, export_many

    export_many(model, {out: ExportConfig(format=fmt, precision=precision)
                        for (fmt, precision), out in outs.items()}, data=train_set, check_data=val_set)
    return {}


def _export_verify(model, out: Path, fmt: str, precision: str, train_set, val_set, test_set) -> Dict[str, Any]:
    """One artifact alone: after export_many failed, each step records its own error."""
    from edgeprune.export import ExportConfig, export

    export(model, ExportConfig(format=fmt, precision=precision), out, data=train_set, check_data=val_set)
    return _verify(model, out, test_set)


def _verify(model, artifact: Path, test_set) -> Dict[str, Any]:
    from edgeprune.export import verify

    check = verify(artifact, model, data=test_set, samples=len(test_set)).to_dict()  # all 1,000
    return {"bytes": Path(artifact).stat().st_size, "top1_agreement": check["top1_agreement"],
            "accuracy": check["accuracy"], "reference_accuracy": check["reference_accuracy"],
            "passed": check["passed"], "float_layers": check.get("float_layers", [])}


def _profile(fp32: Path, int8: Path) -> Dict[str, Any]:
    from edgeprune.targets import load_target

    with load_target("x86-ort") as target:
        m32, m8 = target.measure(fp32, runs=50), target.measure(int8, runs=50)
    return {"fp32": _measured(m32), "int8": _measured(m8)}


def _measured(m) -> Dict[str, Any]:
    d = m.to_dict()
    return {"p50_ms": d["latency_ms"]["p50"], "cv": d["latency_ms"]["cv"], "source": d["source"],
            "runtime": d["runtime"], "threads": d["threads"], "runs": d["runs"]}
