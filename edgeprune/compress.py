"""`compress`: the main job. A trained CNN, a target and a budget in; verified artifacts that
meet the budget ON THE TARGET out.

    result = compress("r20.pt", "x86-ort", CompressConfig(policy="latency", budget="0.5x"), "out/")

DIR receives model.pt, model.onnx, model.tflite, result.json, report.md, report.html,
pareto.png, history.jsonl (one candidate per line), states/ (each candidate's checkpoint)
and run.json (the settings, so `resume=True` can check it continues the same job).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from edgeprune._io import atomic_write_bytes
from edgeprune._progress import progress as progress_bar, write
from edgeprune.analysis import analyze
from edgeprune.data import LabeledData, load_dataset
from edgeprune.errors import BadInputError
from edgeprune.models import Checkpoint, load_model, reload, save_checkpoint
from edgeprune.policies import AdaptiveConfig, make_policy, parse_budget, prune_by_threshold, search
from edgeprune.policies.budget import comparable_p50
from edgeprune.policies.latency_model import AIM_MARGIN, LatencyModel
from edgeprune.policies.search import LoopState, Row
from edgeprune.pruning.recovery import RecoveryConfig, recover
from edgeprune.train import evaluate

PRECISIONS = ("fp32", "fp16", "int8")
PROBE_MACS = 0.15      # the latency probe's share of the MACs: near where 0.5x budgets land
MAX_THRESHOLD = 4.0    # top of the threshold bisection (normalized attention)
AB_ROUNDS = 4          # a 0.5x budget: benches of the baseline and the candidate, interleaved
MIN_AIMED_STEP = 0.1   # an aim at least this share of the state's MACs below it
UNTRAINED_MARGIN = 0.1  # a baseline must beat chance by this share of the headroom above it


@dataclass
class CompressConfig:
    """What `compress` should achieve and how hard it may try.

    Args:
        policy: latency, memory or accuracy.
        budget: `12ms` / `0.5x` (latency), `2MB` / `peak:64MB` (memory); none for accuracy.
        tolerance: accuracy drop allowed, in points (accuracy: 0; latency/memory guard: 1).
        precision: of the artifacts measured and shipped (fp32, fp16, int8).
        data: the data set (None: the checkpoint's own, else the built-in MNIST).
        runs, threads: measurement settings (None: the target's protocol defaults).
        finetune_lr: recovery learning rate (None: the checkpoint's optimizer at a reduced rate).
        allow_untrained: accept a baseline at chance-level accuracy (random weights).
    """

    policy: str
    budget: Optional[str] = None
    tolerance: Optional[float] = None
    precision: str = "fp32"
    data: Optional[str] = None
    runs: Optional[int] = None
    threads: Optional[int] = None
    first_guess: bool = True
    finetune_lr: Optional[float] = None
    allow_untrained: bool = False
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    version: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.adaptive, dict):
            self.adaptive = AdaptiveConfig(**self.adaptive)
        if self.policy == "latency" and self.adaptive.scale_by == "params":
            # latency follows MACs, not parameters: high-resolution early layers must count
            self.adaptive = AdaptiveConfig(**{**self.adaptive.to_dict(), "scale_by": "macs"})
        if self.precision not in PRECISIONS:
            raise BadInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.policy_obj = make_policy(self.policy, parse_budget(self.policy, self.budget), self.tolerance)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CompressConfig":
        return cls(**d)


@dataclass
class _Job:
    """Everything one run works with; built once, shared by the helpers below."""

    cfg: CompressConfig
    target: Any
    out: Path
    ckpt: Checkpoint
    train: LabeledData
    val: LabeledData
    test: LabeledData
    calibration: List[Any]
    progress: bool = True

    @property
    def fmt(self) -> str:
        return "tflite" if self.target.runtime == "tflite" else "onnx"

    def state_path(self, iteration: int) -> Path:
        return self.out / "states" / f"iter-{iteration:03d}.pt"

    def artifact_path(self, iteration: int) -> Path:
        return self.out / "candidates" / f"iter-{iteration:03d}.{self.fmt}"

    def log(self, message: str) -> None:
        if self.progress:
            write(message)


def compress(model: Union[str, Path, Checkpoint], target: Any, cfg: CompressConfig,
             out_dir: Union[str, Path], resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run (or resume) the job; returns the result.json object. `met` says if the budget holds."""
    from edgeprune.targets import load_target

    start = time.time()
    target = load_target(target) if isinstance(target, (str, Path)) else target
    job = _make_job(model, target, cfg, Path(out_dir), resume, progress)
    with target.session():
        rows = _read_history(job) if resume else []
        if not rows:
            rows = [_baseline_row(job)]
        policy = cfg.policy_obj
        bar = progress_bar(total=cfg.adaptive.max_iterations, initial=len(rows) - 1, desc="compress",
                           enabled=progress)
        search(rows, policy, rows[0]["threshold"], rows[0]["step"], cfg.adaptive.max_iterations,
               cfg.adaptive.max_resets, lambda loop: _candidate(job, rows, loop),
               lambda row: (_append_history(job, row), job.log(_row_line(row)), bar.update(1)))
        bar.close()
        final = policy.select(rows, rows[0])
        from edgeprune.report import finish_job
        return finish_job(job, rows, final, time.time() - start)


def _make_job(model, target, cfg: CompressConfig, out: Path, resume: bool, progress: bool) -> _Job:
    """Load and check everything before anything is written to `out`: a corrupt model or a
    wrong data set must leave no half-made run behind."""
    ckpt = model if isinstance(model, Checkpoint) else load_model(model)
    c, _, size = ckpt.input_shape
    classes = ckpt.metadata.get("num_classes")
    source = cfg.data or ckpt.metadata.get("dataset") or "mnist"
    sets = [load_dataset(source, s, channels=c, size=size, num_classes=classes) for s in ("train", "val", "test")]
    if not cfg.allow_untrained:
        check_trained(ckpt, sets[1])
    _check_out_dir(out, cfg, target, resume)
    calib = list(sets[0].subset(cfg.adaptive.calibration_samples).loader(64))
    return _Job(cfg, target, out, ckpt, *sets, calib, progress)


def check_trained(ckpt: Checkpoint, val: LabeledData) -> float:
    """Refuse a baseline near chance level (random weights, a wrong data set): pruning it
    cannot be judged, and an accuracy guard around chance would pass anything. Returns the
    validation accuracy."""
    accuracy = evaluate(ckpt.model, val)["top1"]
    chance = 100.0 / max(val.num_classes, 1)
    if accuracy < chance + UNTRAINED_MARGIN * (100.0 - chance):
        raise BadInputError(
            f"the model scores {accuracy:.1f}% on the validation split of {val.name or 'the data'}, near "
            f"chance ({chance:.0f}%): it looks untrained (random weights?) or meant for other data; "
            f"pass --weights, train it first, or --allow-untrained")
    return accuracy


def _check_out_dir(out: Path, cfg: CompressConfig, target, resume: bool) -> None:
    run = {"config": cfg.to_dict(), "target": target.name}
    run_file = out / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if not resume:
            raise BadInputError(f"{out} already holds a compress run: pass --resume or choose another --out")
        if previous != json.loads(json.dumps(run)):
            raise BadInputError(f"{out} holds a run with other settings; --resume needs the same ones")
    out.mkdir(parents=True, exist_ok=True)
    (out / "states").mkdir(exist_ok=True)
    atomic_write_bytes(run_file, (json.dumps(run, indent=2) + "\n").encode())


def _read_history(job: _Job) -> List[Row]:
    """Rows written so far; a torn last line (a run killed mid-write) is dropped."""
    path = job.out / "history.jsonl"
    rows: List[Row] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    rows = [r for r in rows if job.state_path(r["iteration"]).exists()]
    if rows:
        job.log(f"resuming after {len(rows) - 1} candidate(s) from {path}")
    return rows


def _append_history(job: _Job, row: Row) -> None:
    with open(job.out / "history.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _baseline_row(job: _Job) -> Row:
    job.log(f"baseline: measuring {job.ckpt.arch} on {job.target.name} ({job.fmt} {job.cfg.precision})")
    model = job.ckpt.model
    _save_state(job, 0, model)
    guess = _first_guess(job) if job.cfg.first_guess else 0.0
    step = max(job.cfg.adaptive.step, guess / 2)  # a proxy that asks for deep pruning takes big steps
    row = _measure_row(job, 0, model, parent=None, threshold=0.0)
    # the first candidate lands on the guess: T0 + λ = guess
    row.update(step=step, good=True, met_budget=False, threshold=max(0.0, guess - step))
    if _aims(job):
        row["probes"] = [_probe(job, row["macs"])]
    if job.cfg.precision == "int8":
        row["fp32_comparison"] = _int8_against_fp32(job, model, row)
    _append_history(job, row)
    return row


def _int8_against_fp32(job: _Job, model, row: Row) -> Dict[str, Any]:
    """The baseline at fp32 on the same target: int8 is not always faster (onnxruntime's
    CPU EP ran depthwise and LayerNorm nets 3-13x slower in int8), and a user should hear
    so before the search spends its time on the wrong precision. Judged by the exporter's
    one rule (edgeprune.export.int8_slowdown), as `profile` judges it."""
    from edgeprune.export import int8_slowdown, int8_slowdown_note

    artifact = export_for(job, model, job.out / "candidates" / f"baseline-fp32.{job.fmt}", precision="fp32")
    m = job.target.measure(artifact, runs=job.cfg.runs, threads=job.cfg.threads)
    note = int8_slowdown_note(row["p50_ms"], m.p50_ms, job.target.name)
    if note:
        job.log(f"{note} [{m.source}]")
    d = int8_slowdown(row["p50_ms"], m.p50_ms)
    return {"fp32_p50_ms": m.p50_ms, "int8_p50_ms": row["p50_ms"], "int8_over_fp32": d["ratio"],
            "int8_slower": d["slower"], "source": m.source}


def _aims(job: _Job) -> bool:
    return job.cfg.first_guess and job.cfg.policy_obj.budget.kind in ("latency_ms", "latency_ratio")


def _probe(job: _Job, base: int) -> Dict[str, Any]:
    """A second measured point for the latency curve: the network pruned the way candidates
    are, to PROBE_MACS of its `base` MACs, untrained (latency depends on shapes, not weights)."""
    trial = copy.deepcopy(job.ckpt.model)
    threshold = _threshold_for(job, trial, PROBE_MACS * base, "macs")
    prune_by_threshold(trial, threshold, job.ckpt.example_input(), job.calibration, job.cfg.adaptive)
    artifact = export_for(job, trial, job.out / "candidates" / f"probe.{job.fmt}")
    probe = {"macs": analyze(trial, job.ckpt.input_shape).macs, **measure_on_target(job, artifact)}
    job.log(f"latency probe at {probe['macs'] / base:.0%} of the MACs: p50 {probe['p50_ms']:.3f} ms "
            f"[{probe['source']}]{_ab_note(probe)}")
    return probe


def _candidate(job: _Job, rows: List[Row], loop: LoopState) -> Row:
    """Prune the current state at T + λ (or at the aimed threshold), fine-tune, evaluate, export
    and measure it."""
    iteration = len(rows)
    parent = loop.state["iteration"]
    model = _load_state(job, parent)
    aimed = _aimed_threshold(job, rows, loop, model)  # on this state's renormalized scores
    threshold = aimed if aimed > 0 else loop.threshold + loop.step
    removed = prune_by_threshold(model, threshold, job.ckpt.example_input(), job.calibration, job.cfg.adaptive)
    a = job.cfg.adaptive
    recover(model, job.ckpt.model, job.train.subset(a.finetune_samples), job.ckpt.metadata,
            RecoveryConfig(a.finetune_epochs, job.cfg.finetune_lr, a.distill, a.seed + iteration, job.progress),
            job.ckpt.arch)
    _save_state(job, iteration, model)
    row = _measure_row(job, iteration, model, parent, threshold)
    _confirm(job, row)
    # an aimed step that fails is halved like λ: the next try goes half as far
    step = threshold - loop.threshold if aimed > loop.threshold else loop.step
    row.update(step=step, removed_channels=removed, aimed=aimed > 0)
    return row


def _aimed_threshold(job: _Job, rows: List[Row], loop: LoopState, model) -> float:
    """Latency budgets: the threshold that takes `model` (the state being pruned) to the MACs
    the curve through the measurements so far puts at the budget (with a margin), but never
    past halfway to the nearest candidate below this state's MACs that lost too much accuracy.
    So after a miss the step halves, as the paper's λ does, in MACs rather than in T: on a
    state pruned before, renormalized attention makes T + λ jump far (on ResNet-20, from 7.5 to
    2.5 MMACs). 0.0 when not aiming, and the loop then takes T + λ."""
    if not _aims(job):
        return 0.0
    curve = LatencyModel.fit(_measured_points(rows))
    if curve is None:
        return 0.0
    macs = analyze(model, job.ckpt.input_shape).macs
    goal, why = curve.macs_for(AIM_MARGIN * job.cfg.policy_obj.budget.limit(rows[0])), "the curve"
    if goal >= macs:  # this state measured slower than the curve through every point says
        goal, why = (1 - MIN_AIMED_STEP) * macs, f"{MIN_AIMED_STEP:.0%} below this state, slower than the curve"
    misses = [r["macs"] for r in rows[1:] if not r.get("good") and r["macs"] < macs]
    if misses and goal < (macs + max(misses)) / 2:
        goal, why = (macs + max(misses)) / 2, "halfway to the nearest accuracy miss"
    threshold = _threshold_for(job, model, goal, "macs")
    job.log(f"{curve.describe()}; aiming at {goal / 1e6:.2f} MMACs ({why}), T={threshold:.3f} (a prediction)")
    return threshold


def _measured_points(rows: List[Row]) -> List[tuple]:
    """(MACs, p50 on the baseline's scale) of every measured row and probe; proxies never enter."""
    seen = [*rows, *rows[0].get("probes", [])]
    return [(r["macs"], comparable_p50(r, rows[0])) for r in seen
            if r.get("source") in ("device", "emulated") and r.get("p50_ms")]


def _measure_row(job: _Job, iteration: int, model, parent: Optional[int], threshold: float) -> Row:
    """Accuracy on the validation split, static counts, and a MEASURED profile on the target."""
    report = analyze(model, job.ckpt.input_shape, job.ckpt.arch)
    artifact = export_for(job, model, job.artifact_path(iteration))
    return {
        "iteration": iteration, "parent": parent, "threshold": threshold,
        "accuracy": evaluate(model, job.val)["top1"], "params": report.params, "macs": report.macs,
        "artifact": str(artifact.relative_to(job.out)), "artifact_bytes": artifact.stat().st_size,
        **measure_on_target(job, artifact), "time": time.time(),
    }


def measure_on_target(job: _Job, artifact: Path) -> Dict[str, Any]:
    """A row's measured fields. Under a ratio budget (0.5x) every candidate is benched
    interleaved with the baseline artifact (DESIGN.md: A/B comparisons interleaved), and is
    judged against the baseline p50 of the same window: drift on the device (a noisy
    neighbour, heat) then falls on both alike instead of deciding `met`."""
    baseline = job.artifact_path(0)
    if job.cfg.policy_obj.budget.kind != "latency_ratio" or artifact == baseline:
        m = job.target.measure(artifact, runs=job.cfg.runs, threads=job.cfg.threads)
        return {"p50_ms": m.p50_ms, "peak_memory_mb": m.peak_memory_mb, "source": m.source,
                "measurement": m.to_dict()}
    runs = None if job.cfg.runs is None else max(10, math.ceil(job.cfg.runs / AB_ROUNDS))
    c = job.target.compare(baseline, artifact, rounds=AB_ROUNDS, runs=runs, threads=job.cfg.threads)
    return {"p50_ms": c.b.p50_ms, "peak_memory_mb": c.b.peak_memory_mb, "source": c.b.source,
            "measurement": c.b.to_dict(), "baseline_p50_ms": c.a.p50_ms, "baseline_measurement": c.a.to_dict(),
            "ab": {k: v for k, v in c.to_dict().items() if k not in ("a", "b")}}


def _confirm(job: _Job, row: Row) -> None:
    """A candidate that meets a ratio budget is benched against the baseline once more, and
    the slower of the two A/Bs stands: on a shared VM the ratio of one model moved from 0.47x
    to 0.52x between two A/Bs minutes apart, and the search stops at the first candidate that
    meets the budget, so a single lucky measurement would decide where it stops."""
    if "baseline_p50_ms" not in row or not job.cfg.policy_obj.budget.is_met(row):
        return
    again = measure_on_target(job, job.out / row["artifact"])
    ratios = [r["p50_ms"] / r["baseline_p50_ms"] for r in (row, again)]
    job.log(f"  candidate {row['iteration']} met the budget at {ratios[0]:.2f}x; a second A/B: {ratios[1]:.2f}x")
    if ratios[1] > ratios[0]:
        row.update(again)
    row["confirmation_ratios"] = ratios


def _ab_note(row: Row) -> str:
    if "baseline_p50_ms" not in row:
        return ""
    return f", {row['p50_ms'] / row['baseline_p50_ms']:.2f}x the baseline benched alongside"


def export_for(job: _Job, model, artifact: Path, precision: Optional[str] = None) -> Path:
    """Export `model` as the job's checkpoint kind, calibrating int8 on training images."""
    from edgeprune.export import export_artifact

    ckpt = Checkpoint(model.eval(), job.ckpt.arch, job.ckpt.arch_kwargs, {}, job.ckpt.metadata)
    calib = job.train.subset(job.cfg.adaptive.calibration_samples)
    return export_artifact(ckpt, artifact, precision=precision or job.cfg.precision, data=calib)


def _first_guess(job: _Job) -> float:
    """Size budgets, a parameter-count proxy: the threshold whose pruned params match the
    budget's share of the model bytes. Only a starting point: every candidate is then judged by
    measurement. (Latency budgets start from a measured probe instead: see _probe.)
    """
    budget = job.cfg.policy_obj.budget
    if budget.kind != "size_bytes":
        return 0.0
    base = analyze(job.ckpt.model, job.ckpt.input_shape)
    goal = budget.value / max(base.model_bytes[job.cfg.precision], 1) * base.params
    threshold = _threshold_for(job, job.ckpt.model, goal, "params")
    job.log(f"first guess (FLOPs proxy, not a measurement): threshold {threshold:.3f} for {budget.text}")
    return threshold


def _threshold_for(job: _Job, model, goal: float, key: str) -> float:
    """Bisection on scratch copies (no fine-tuning): the smallest threshold whose pruned
    `key` (macs or params) is at most `goal`; the search range's top when none reaches it."""
    lo, hi = 0.0, MAX_THRESHOLD
    for _ in range(7):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        prune_by_threshold(trial, mid, job.ckpt.example_input(), job.calibration, job.cfg.adaptive)
        size = getattr(analyze(trial, job.ckpt.input_shape), key)
        lo, hi = (lo, mid) if size <= goal else (mid, hi)
    return hi


def _save_state(job: _Job, iteration: int, model) -> None:
    save_checkpoint(job.state_path(iteration), model, job.ckpt.arch, job.ckpt.arch_kwargs, job.ckpt.metadata)


def _load_state(job: _Job, iteration: int):
    return reload(job.state_path(iteration), job.ckpt).model


def _row_line(row: Row) -> str:
    flags = ("good" if row.get("good") else "") + (" met" if row.get("met_budget") else "")
    return (f"  candidate {row['iteration']}: T={row['threshold']:.3f} acc {row['accuracy']:.2f}% "
            f"params {row['params']:,} p50 {row['p50_ms']:.3f} ms [{row['source']}]{_ab_note(row)} {flags}")
