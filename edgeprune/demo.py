"""The main job on built-in defaults: train (or reuse) a ResNet-20 on the built-in MNIST,
start the emulated Raspberry Pi 4, compress under a measured 0.5x latency budget, export
TFLite int8 and ONNX int8, verify both on the target, write the report, stop the emulator.

Without root or sshd it falls back to the local x86-ort target and says so.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from edgeprune.errors import EdgePruneError

DEMO_ARCH = "resnet20"
DEMO_EPOCHS = 3
DEMO_ITERATIONS = 6
DEMO_TARGET = "emu-rpi4"
FALLBACK_TARGET = "x86-ort"


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEPRUNE_CACHE", Path.home() / ".cache" / "edgeprune"))


def log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def trained_model(epochs: int = DEMO_EPOCHS) -> Path:
    """A ResNet-20 trained on the built-in MNIST, cached between runs."""
    from edgeprune.data import load_dataset
    from edgeprune.models import create_model, save_checkpoint
    from edgeprune.train import TrainConfig, evaluate, train

    path = cache_dir() / "demo" / f"{DEMO_ARCH}-mnist-e{epochs}.pt"
    if path.exists():
        log(f"reusing the trained {DEMO_ARCH} in {path}")
        return path
    log(f"training {DEMO_ARCH} on the built-in MNIST for {epochs} epochs (cached for next time)")
    data = load_dataset("mnist", "train")
    model = create_model(DEMO_ARCH)
    stats = train(model, data, TrainConfig(epochs=epochs, seed=0))
    acc = evaluate(model, load_dataset("mnist", "test"))["top1"]
    log(f"trained in {stats['seconds']:.0f} s: test top-1 {acc:.2f}%")
    save_checkpoint(path, model, DEMO_ARCH, {}, {"input_shape": [1, 28, 28], "num_classes": 10,
                                                  "dataset": "mnist", "accuracy": acc})
    return path


@contextlib.contextmanager
def demo_target(preferred: str = DEMO_TARGET) -> Iterator[Any]:
    """The emulated target when it can start here, else the local one (saying why)."""
    from edgeprune.targets import emulate, load_target

    target = load_target(preferred)
    reason = _cannot_emulate()
    already_up = False
    if reason is None:
        try:
            already_up = bool(emulate.status(preferred)["running"])
            emulate.up(target)
        except EdgePruneError as exc:
            reason = str(exc)
    if reason is not None:
        log(f"cannot start {preferred} ({reason}); falling back to the local {FALLBACK_TARGET} target")
        yield load_target(FALLBACK_TARGET)
        return
    if already_up:  # someone else's emulator (a compress in another terminal): used, and left running
        log(f"using the running {preferred} (emulated, not the board's numbers); it stays up afterwards")
        yield target
        return
    log(f"started {preferred}: a real sshd on 127.0.0.1, agent in a cgroup (emulated, not the board's numbers)")
    try:
        yield target
    finally:
        emulate.down(preferred)
        log(f"stopped {preferred}")


def _cannot_emulate() -> Optional[str]:
    if os.geteuid() != 0:
        return "not root"
    if not Path("/usr/sbin/sshd").exists():
        return "no sshd: apt-get install openssh-server"
    return None


def run_demo(out_dir: str | Path = "demo-out", epochs: int = DEMO_EPOCHS) -> Dict[str, Any]:
    """Run the whole demo; returns the compress result (result.json)."""
    from edgeprune.compress import CompressConfig, compress
    from edgeprune.search import EvaluatorConfig

    out = Path(out_dir)
    model = trained_model(epochs)
    if out.exists():
        shutil.rmtree(out)
    with demo_target() as target:
        cfg = CompressConfig(policy="latency", budget="0.5x", evaluation=EvaluatorConfig(precision="int8"),
                             method_options={"max_iterations": DEMO_ITERATIONS})
        log(f"compressing on {target.name}: latency budget 0.5x of the measured baseline, int8")
        return compress(model, target, cfg, out)
