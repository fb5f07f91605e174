"""Emulated latency that means something (issue 16): is an emulated p50 repeatable, and is it
the slower CPU the profile's cpu_fraction stands for?

A CFS quota lets a process run at full speed until the period's budget is spent and then
stalls it; per-run wall times of a short model show either the full speed or a stall, never
a slower CPU. Under a quota the agent therefore times each run by its process CPU time, scaled
so the runs add up to the loop's wall time (device_agents/agent.py, `cpu_shares_of_wall`), and
a profile's p50 is taken over the faster half of its 0.5-s blocks (`steady_p50` in
edgeprune/targets/measurement.py; the p50 of all runs is reported beside it). This bench
profiles, with random weights (latency needs shapes, not weights):

    small   ResNet-20 at 1x28x28 (well under a quota period on this machine)
    large   MobileNetV2 at 3x224x224 (>= 10 ms a run)

PROFILES times each on the unlimited local target (x86-ort, 1 thread) and on emu-rpi4 (half a
core, behind a real sshd), alternating, and reports the CV of the p50 across the profiles
(goal <= 5%) and the emulated/unlimited p50 ratio against 1/cpu_fraction (goal: within 15%
for the >= 10 ms model). Needs root. Prints a table and writes bench/results/emulation.json.

    .venv/bin/python bench/bench_emulation.py [--profiles 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine, print_table, write_json  # noqa: E402
from edgeprune.export import export_artifact  # noqa: E402
from edgeprune.models import create_model  # noqa: E402
from edgeprune.targets import emulate, load_target  # noqa: E402
from tests.agent_kit import testing  # noqa: E402

MODELS = {"small": ("resnet20", {}, (1, 28, 28)), "large": ("mobilenet_v2", {}, (3, 224, 224))}


def artifacts(workdir: Path) -> dict:
    out = {}
    for key, (arch, kwargs, shape) in MODELS.items():
        model = create_model(arch, in_channels=shape[0], input_size=shape[-1], **kwargs).eval()
        out[key] = export_artifact(model, workdir / f"{key}-{arch}.onnx", input_shape=list(shape))
    return out


def main() -> int:
    args = _args()
    os.environ.setdefault("EDGEPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="edgeprune-bench-cache-"))
    reason = testing.emulation_missing()
    if reason:
        print(f"bench_emulation: {reason}", file=sys.stderr)
        return 2
    arts = artifacts(Path(tempfile.mkdtemp(prefix="edgeprune-bench-emulation-")))
    local, emu = load_target("x86-ort"), load_target("emu-rpi4")
    emulate.up(emu)
    p50 = {(t, k): [] for t in ("local", "emu") for k in arts}
    all_runs = {k: [] for k in arts}  # emulated: the p50 of all runs, beside the steady one
    timing = None
    try:
        for i in range(args.profiles):
            order = (("local", local), ("emu", emu)) if i % 2 == 0 else (("emu", emu), ("local", local))
            for name, target in order:
                for key, art in arts.items():
                    m = target.measure(art, use_cache=False)
                    p50[(name, key)].append(m.p50_ms)
                    if name == "emu":
                        timing = timing or m.device.get("timing")
                        all_runs[key].append(m.device["timing"].get("p50_all_runs_ms", m.p50_ms))
                    print(f"  {i + 1}/{args.profiles} {name} {key}: p50 {m.p50_ms:.3f} ms", file=sys.stderr, flush=True)
    finally:
        emulate.down(emu.name)
    fraction = emu.emulation.cpu_fraction
    rows = []
    for key in arts:
        lo, em = p50[("local", key)], p50[("emu", key)]
        ratio = statistics.median(em) / statistics.median(lo)
        rows.append({"model": key, "arch": MODELS[key][0], "shape": list(MODELS[key][2]),
                     "unlimited_p50_ms": statistics.median(lo), "emulated_p50_ms": statistics.median(em),
                     "unlimited_cv": _cv(lo), "emulated_cv": _cv(em), "ratio": ratio,
                     "expected_ratio": 1 / fraction, "ratio_error": ratio * fraction - 1,
                     "emulated_p50s_ms": em, "unlimited_p50s_ms": lo,
                     "emulated_all_runs_p50s_ms": all_runs[key], "emulated_all_runs_cv": _cv(all_runs[key])})
    print_table(["model", "unlimited p50 ms", "emulated p50 ms", "CV of p50 unlimited / emulated (goal <= 5%)",
                 "emulated CV, p50 of all runs",
                 f"emulated / unlimited (1/cpu_fraction = {1 / fraction:.2f}; goal within 15%)"],
                [[f"{r['arch']} {'x'.join(map(str, r['shape']))}", f"{r['unlimited_p50_ms']:.3f}",
                  f"{r['emulated_p50_ms']:.3f}", f"{r['unlimited_cv']:.1%} / {r['emulated_cv']:.1%}",
                  f"{r['emulated_all_runs_cv']:.1%}",
                  f"{r['ratio']:.2f} ({r['ratio_error']:+.0%})"] for r in rows])
    print(f"\n{args.profiles} profiles each, alternating; x86-ort and emu-rpi4 (onnxruntime, 1 thread); "
          f"emulated timing: {timing}")
    write_json("emulation", {"machine": machine(), "profiles": args.profiles, "cpu_fraction": fraction,
                             "timing": timing, "rows": rows})
    return 0


def _cv(xs) -> float:
    return statistics.pstdev(xs) / statistics.mean(xs) if len(xs) > 1 else 0.0


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", type=int, default=5)
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
