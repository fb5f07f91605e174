"""`compress`: the main job. A trained CNN, a target and a budget in; verified artifacts that
meet the budget ON THE TARGET out.

    result = compress("r20.pt", "x86-ort", CompressConfig(policy="latency", budget="0.5x"), "out/")

The job drives a search method (a Searcher, `method`) with an Evaluator and a Policy: the
method proposes, the Evaluator builds and judges each proposal (estimate or measure), the
Policy decides what is good and what ships, and every candidate is one line of history.jsonl.
Then the shipped candidate is exported, measured and verified on the target.

DIR receives model.pt, model.onnx, model.tflite, result.json, report.md, report.html,
pareto.png, history.jsonl, states/ (each measured candidate's checkpoint), candidates/ (their
artifacts) and run.json (the settings, so `resume=True` can check it continues the same job).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from edgeprune._io import atomic_write_bytes
from edgeprune._progress import progress as progress_bar, write
from edgeprune.analysis import analyze
from edgeprune.data import LabeledData, load_dataset
from edgeprune.errors import BadInputError, MissingDependencyError
from edgeprune.models import Checkpoint, load_model, reload
from edgeprune.pruning import channel_spec
from edgeprune.report import write_reports
from edgeprune.search import (
    Candidate, Evaluator, EvaluatorConfig, History, Policy, SearchContext, Splits, create_searcher, make_policy,
    parse_budget, predictor_error,
)
from edgeprune.train import evaluate

UNTRAINED_MARGIN = 0.1  # a baseline must beat chance by this share of the headroom above it


@dataclass
class CompressConfig:
    """What `compress` should achieve and how hard it may try.

    Args:
        policy: latency, memory or accuracy.
        budget: `12ms` / `0.5x` (latency), `2MB` / `peak:64MB` (memory); none for accuracy.
        tolerance: accuracy drop allowed, in points (accuracy: 0; latency/memory guard: 1).
        method: the search method (`edgeprune methods`); method_options its settings.
        data: the data set (None: the checkpoint's own, else the built-in MNIST).
        evaluation: how candidates are built and measured (precision, runs, threads,
            recovery, round_to, ignored layers, seed): see EvaluatorConfig.
        allow_untrained: accept a baseline at chance-level accuracy (random weights).
        lut: "auto" predicts latency with the target's latency table for this model when one
            was built (`edgeprune lut build`), else with the FLOPs proxy; "off" always the proxy.
    """

    policy: str
    budget: Optional[str] = None
    tolerance: Optional[float] = None
    method: str = "adaptive"
    method_options: Dict[str, Any] = field(default_factory=dict)
    data: Optional[str] = None
    evaluation: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    allow_untrained: bool = False
    lut: str = "auto"
    version: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.evaluation, dict):  # read back from run.json
            self.evaluation = EvaluatorConfig(**self.evaluation)
        if self.lut not in ("auto", "off"):
            raise BadInputError(f"lut must be auto or off, got {self.lut!r}")
        self.policy_obj: Policy = make_policy(self.policy, parse_budget(self.policy, self.budget), self.tolerance)

    @property
    def precision(self) -> str:
        return self.evaluation.precision

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CompressConfig":
        return cls(**d)


@dataclass
class _Job:
    """Everything one run works with; built once, before anything is written."""

    cfg: CompressConfig
    target: Any
    out: Path
    ckpt: Checkpoint
    data: Splits
    progress: bool = True

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
    evaluator = Evaluator(job.ckpt, target, job.out, job.data, cfg.policy_obj, cfg.evaluation, job.log, progress)
    with target.session():
        evaluator.table = _latency_table(job)
        history = _open_history(job, evaluator, resume)
        searcher = create_searcher(cfg.method, _context(job, evaluator))
        bar = progress_bar(total=None, initial=len(history) - 1, desc=f"compress ({cfg.method})", enabled=progress)
        drive(searcher, evaluator, history, lambda c: (job.log(_line(c)), bar.update(1)))
        bar.close()
        final = cfg.policy_obj.select(history.candidates, history.baseline)
        return _finish(job, evaluator, history, final, time.time() - start)


def _latency_table(job: _Job) -> Any:
    """The target's latency table for this model, precision and channel multiple, if one was
    built (a table built for another device, runtime, version or thread count is never used)."""
    if job.cfg.lut == "off":
        return None
    from edgeprune.targets.lut import TableBuilder

    e = job.cfg.evaluation
    table = TableBuilder(job.ckpt.model, job.ckpt.input_shape, job.target, e.precision, e.round_to).load()
    if table is None:
        job.log(f"no latency table for this model on {job.target.name} at {e.precision}: candidates not "
                "measured are placed by the FLOPs proxy (build one with `edgeprune lut build`)")
    else:
        err = table.error()
        job.log(f"using the {table.describe()} ({err['within_10pct']} of {err['samples']} {err['measured_on']} "
                "within +-10%); predictions choose where to look, measurements decide")
        if e.round_to < table.key["round_to"]:
            job.log(f"note: the table was checked on multiples of {table.key['round_to']} channels (the target's "
                    f"channel_multiple); methods that sample with it stay on them, others may cut between "
                    "multiples, where the runtime may be slower than the table says")
    return table


def drive(searcher, evaluator: Evaluator, history: History,
          on_candidate: Callable[[Candidate], None] = lambda c: None) -> History:
    """Ask, evaluate, record, tell, until the method is done (or proposes nothing)."""
    while not searcher.done(history):
        proposals = searcher.ask(history)
        if not proposals:
            break
        batch = []
        for proposal in proposals:
            candidate = evaluator.evaluate(proposal, history.next_iteration)
            candidate.method = searcher.name
            history.append(candidate)
            evaluator.update(history)
            on_candidate(candidate)
            batch.append(candidate)
        searcher.tell(batch)
    return history


def _make_job(model, target, cfg: CompressConfig, out: Path, resume: bool, progress: bool) -> _Job:
    """Load and check everything before anything is written to `out`: a corrupt model or a
    wrong data set must leave no half-made run behind."""
    ckpt = model if isinstance(model, Checkpoint) else load_model(model)
    c, _, size = ckpt.input_shape
    classes = ckpt.metadata.get("num_classes")
    source = cfg.data or ckpt.metadata.get("dataset") or "mnist"
    train, val, test = (load_dataset(source, s, channels=c, size=size, num_classes=classes)
                        for s in ("train", "val", "test"))
    if not cfg.allow_untrained:
        check_trained(ckpt, val)
    create_searcher(cfg.method, _context_of(ckpt, cfg, []))  # an unknown method or option fails here
    _check_out_dir(out, cfg, target, resume)
    calibration = list(train.subset(cfg.evaluation.calibration_samples).loader(64))
    return _Job(cfg, target, out, ckpt, Splits(train, val, test, calibration), progress)


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


def _open_history(job: _Job, evaluator: Evaluator, resume: bool) -> History:
    """The history so far (resume) or a fresh one that starts with the measured baseline.
    A measured candidate whose state file is missing ends the replay there."""
    path = job.out / "history.jsonl"
    if resume:
        history = History.read(path, keep=lambda c: c.fidelity != "measure" or evaluator.state_path(c.iteration).exists())
        if len(history):
            history.rewrite()
            job.log(f"resuming after {len(history) - 1} candidate(s) from {path}")
            evaluator.update(history)
            return history
    if path.exists():
        path.unlink()
    history = History(path)
    job.log(f"baseline: measuring {job.ckpt.arch} on {job.target.name} ({evaluator.fmt} {job.cfg.precision})")
    baseline = evaluator.baseline()
    baseline.method = job.cfg.method
    history.append(baseline)
    evaluator.update(history)
    return history


def _context(job: _Job, evaluator: Evaluator) -> SearchContext:
    ctx = _context_of(job.ckpt, job.cfg, job.data.calibration, evaluator.load_state, job.log)
    if evaluator.table is not None:
        ctx.predict_latency, ctx.channel_multiple = evaluator.predict_latency, evaluator.table.key["round_to"]
    return ctx


def _context_of(ckpt: Checkpoint, cfg: CompressConfig, calibration, load_state=lambda i: None,
                log=lambda m: None) -> SearchContext:
    e = cfg.evaluation
    return SearchContext(ckpt.model, tuple(ckpt.input_shape), calibration, cfg.policy_obj, e.precision,
                         e.round_to, e.ignored, e.seed, dict(cfg.method_options), load_state, log)


# --------------------------------------------------------------------------- the end of a run

def _finish(job: _Job, evaluator: Evaluator, history: History, final: Candidate, wall: float) -> Dict[str, Any]:
    """Export the shipped candidate as model.onnx and model.tflite, measure and verify it on
    the target, decide `met`, and write result.json and the reports."""
    from edgeprune.export import verify

    baseline, policy = history.baseline, job.cfg.policy_obj
    shipped = reload(evaluator.state_path(final.iteration), job.ckpt)
    model = shipped.model
    shipped.metadata = {**job.ckpt.metadata, "accuracy": evaluate(model, job.data.test)["top1"]}
    shipped.save(job.out / "model.pt")
    artifacts = _export_final(job, evaluator, model)
    measured = evaluator.measure_artifact(artifacts[evaluator.fmt])  # by the Evaluator's protocol
    final_now = Candidate.from_dict({**final.to_dict(), **measured,
                                     "artifact_bytes": artifacts[evaluator.fmt].stat().st_size})
    verifications = {fmt: verify(path, shipped, data=job.data.test, target=job.target.name).to_dict()
                     for fmt, path in artifacts.items() if path}
    verified = all(v["passed"] for v in verifications.values())
    met, reason = policy.verdict(final_now, baseline, verified)
    base_measurement = measured.get("baseline_measurement", baseline.measurement)
    result = {
        "policy": policy.name, "budget": job.cfg.budget, "tolerance": policy.guard, "method": job.cfg.method,
        "met": met, "reason": reason, "guard_passed": policy.good(final, baseline),
        "budget_met": policy.meets_budget(final_now, baseline), "verified": verified,
        "precision": job.cfg.precision, "target": job.target.name,
        "baseline": _summary(job, job.ckpt.model, baseline, base_measurement),
        "final": _summary(job, model, final, measured["measurement"]),
        "ab": measured.get("ab"), "int8_vs_fp32": baseline.extra.get("fp32_comparison"),
        "artifacts": {k: (str(v) if v else None) for k, v in artifacts.items()},
        "verification": verifications.get(evaluator.fmt), "verifications": verifications,
        "iterations": len(history) - 1, "final_iteration": final.iteration,
        "search": _search_summary(history, evaluator.table), "wall_seconds": round(wall, 1),
    }
    atomic_write_bytes(job.out / "result.json", (json.dumps(result, indent=2) + "\n").encode())
    write_reports(job.out, result, history.candidates, channel_spec(job.ckpt.model), channel_spec(model))
    return result


def _export_final(job: _Job, evaluator: Evaluator, model) -> Dict[str, Optional[Path]]:
    """model.onnx and model.tflite at the job's precision (TFLite needs the tflite extra)."""
    out: Dict[str, Optional[Path]] = {}
    for fmt in ("onnx", "tflite"):
        try:
            out[fmt] = evaluator.export(model, job.out / f"model.{fmt}")
        except MissingDependencyError as exc:
            if fmt == evaluator.fmt:
                raise
            job.log(f"skipping model.{fmt}: {exc}")
            out[fmt] = None
    return out


def _summary(job: _Job, model, c: Candidate, measurement: Dict[str, Any]) -> Dict[str, Any]:
    report = analyze(model, job.ckpt.input_shape, job.ckpt.arch)
    return {"accuracy": evaluate(model, job.data.test)["top1"], "val_accuracy": c.accuracy,
            "params": report.params, "macs": report.macs, "model_bytes": c.artifact_bytes,
            "measurement": measurement}


def _search_summary(history: History, table: Any = None) -> Dict[str, Any]:
    """How the method spent its effort: estimates against measurements on the target."""
    return {"estimates": len(history.at("estimate")),
            "measurements": len(history.at("measure")) + len(history.at("latency")),
            "predictor_error": predictor_error(history, table)}


def _line(c: Candidate) -> str:
    flags = ("good" if c.good else "") + (" met" if c.met_budget else "")
    acc = "untrained" if c.accuracy is None else f"acc {c.accuracy:.2f}%"
    p50 = "-" if c.p50_ms is None else f"{c.p50_ms:.3f} ms"
    ab = f", {c.p50_ms / c.baseline_p50_ms:.2f}x the baseline benched alongside" if c.baseline_p50_ms else ""
    return (f"  {c.fidelity} {c.iteration}: {acc} params {c.params:,} MACs {c.macs:,} p50 {p50} "
            f"[{c.source}]{ab} {flags}")
