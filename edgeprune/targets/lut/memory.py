"""Peak memory without running the model: the runtime's baseline, plus the weights, plus the
largest set of activations live at once, each term scaled by a factor fitted on a few
measurements of the target (`PeakMemoryModel`).

The graph side (`onnx_memory`) needs only onnx and numpy. A tensor is live from the node
that produces it (graph inputs from the start) until its last consumer has run; graph
outputs stay live to the end; at a node its inputs and outputs are live together. Shapes
come from onnx shape inference with unknown or symbolic dims read as 1; a tensor without
an inferred shape is left out and counted in `unknown_tensors`. Initializers and the values
of Constant nodes are weights (the runtime folds Constants into initializers).

The model: estimate_mb = baseline_mb + weights_factor * weights_mb + activations_factor *
activations_mb. baseline_mb is the measured peak of a one-Relu model (`measure_baseline`),
or an intercept when none is given; the factors are fitted by least squares on relative
error with both held at or above 1 (the runtime holds at least one copy of each), and stay
1.0 with fewer than three points. This linear form is the simplest that fits what is
measured; none of the other graph quantities tried (below) does better.

Measured on x86-ort (onnxruntime 1.32, 1 thread, an AVX-512 Xeon, this 2-core VM), 20 random
sub-networks per family (per-group keep ratios uniform in [0.2, 1.0], seed 0), random weights:

- baseline (one Relu on 1x1x1x1): 12.5-13.0 MB from one call to the next.
- factors fitted on a separate set, two sub-networks of each family drawn with seed 1 (six
  points): weights 1.63, activations 3.05. Errors on all 20 of seed 0:

  | family                  | measured MB | within 20% | median | max   |
  | ResNet-20, 1x28x28      | 13.8-14.9   | 20/20      | 3.3%   | 5.6%  |
  | MobileNetV2, 3x32x32    | 18.7-25.4   | 20/20      | 4.9%   | 12.4% |
  | MobileNetV2, 3x224x224  | 26.0-41.1   | 18/20      | 4.0%   | 57%   |

- fitted instead on the first 5 of a family's 20, errors on the other 15: ResNet-20 15/15
  (max 2.8%), MobileNetV2@32 15/15 (max 12.9%), MobileNetV2@224 14/15 (median 14.8%, max
  32%). Inside one family the weights vary little, so a factor is poorly identified there
  (weights 1.00 and activations 2.43 at 224, 1.37 and 6.27 for ResNet-20): fit on nets that
  differ in both.

Why the 224 outliers, read from onnxruntime in a fresh process: the weights cost 1.4-2 times
their size (the fitted factors), and the arena holds the activations once in the first run
and, when the memory-pattern block it allocates for the second run does not fit in the
freed first-run regions, once more (1.3-10.4 MB more after the first run here). Which
happens depends on which convolutions take the NCHWc kernels, that is on channel counts:
sub-networks 01 and 10 have the same weights (2.6 MB) and activations (9.2 MB) and measure
39.9 and 28.8 MB; 10 and 03 (whose widest layer keeps 96 = 6 x 16 channels) are the two
outliers. Modelling onnxruntime's graph rewrites and arena is beyond an estimate read from
the ONNX file. Also tried at 224, fitted on all 60 points: activations with element-wise ops
written in place, 18/20 (max 33%); the largest single tensor, 18/20 (max 35%); the sum of all
activations (nothing freed), 19/20 (max 22%) but at 0.5 per MB, a proxy rather than memory
held, that grows with depth and not with the widest layer.
"""
from __future__ import annotations

import itertools
import math
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from edgeprune.errors import BadInputError

MB = 1024.0 * 1024.0
MODEL_VERSION = 1
TOLERANCE = 0.20  # the share of models within this relative error is the model's measured error
MIN_FIT_POINTS = 3  # fewer points than the unknowns leave the factors at their defaults


@dataclass(frozen=True)
class MemoryBreakdown:
    """What an ONNX graph holds at its peak, in bytes.

    `largest_step` names the node at which the live activations peak; `unknown_tensors`
    counts tensors left out because their shape could not be inferred."""

    weights_bytes: int
    activations_bytes: int
    largest_step: str
    unknown_tensors: int = 0

    @property
    def weights_mb(self) -> float:
        return self.weights_bytes / MB

    @property
    def activations_mb(self) -> float:
        return self.activations_bytes / MB


def onnx_memory(path: str | os.PathLike) -> MemoryBreakdown:
    """Weights and peak live activations of an ONNX model, from its graph and inferred shapes."""
    import onnx
    try:
        model = onnx.load(str(path))
    except OSError as exc:
        raise BadInputError(f"cannot read ONNX model {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # a file that is not a protobuf raises DecodeError
        raise BadInputError(f"{path} is not an ONNX model: {exc}") from None
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference failed (an unknown op, a bad shape): its tensors count as unknown
        pass
    return _graph_memory(model.graph)


def _graph_memory(graph: Any) -> MemoryBreakdown:
    """The breakdown of a shape-inferred onnx GraphProto."""
    sizes, unknown = _activation_sizes(graph, _weight_names(graph))
    peak, step = _live_peak(graph, sizes)
    return MemoryBreakdown(weights_bytes=_weight_bytes(graph), activations_bytes=peak,
                           largest_step=step, unknown_tensors=unknown)


def _weight_names(graph: Any) -> set[str]:
    """Initializers and Constant outputs: the runtime holds these as weights, not activations."""
    names = {t.name for t in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _weight_bytes(graph: Any) -> int:
    """Bytes of the initializers and of the values of Constant nodes."""
    from onnx import numpy_helper
    total = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            total += sum(numpy_helper.to_array(a.t).nbytes for a in node.attribute if a.name == "value")
    return int(total)


def _activation_sizes(graph: Any, weights: set[str]) -> tuple[dict[str, int], int]:
    """Bytes of every activation with an inferred shape, and how many had none."""
    infos = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    names = [i.name for i in graph.input] + [o for node in graph.node for o in node.output]
    sizes, unknown = {}, 0
    for name in dict.fromkeys(n for n in names if n and n not in weights):
        nbytes = _value_bytes(infos.get(name))
        if nbytes is None:
            unknown += 1
        else:
            sizes[name] = nbytes
    return sizes, unknown


def _value_bytes(info: Any) -> Optional[int]:
    """Bytes of a tensor ValueInfoProto, unknown dims read as 1; None without dtype or shape."""
    from onnx import helper
    if info is None or not info.type.HasField("tensor_type"):
        return None
    tensor = info.type.tensor_type
    if not tensor.elem_type or not tensor.HasField("shape"):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor.shape.dim]
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def _live_peak(graph: Any, sizes: dict[str, int]) -> tuple[int, str]:
    """Largest sum of live activation bytes over the nodes in their stored order, and the
    node where it happens ("<inputs>" when the inputs alone are the peak)."""
    outputs = {o.name for o in graph.output}
    last_use = {name: i for i, node in enumerate(graph.node) for name in node.input}
    live = {i.name for i in graph.input if i.name in sizes}
    current = sum(sizes[name] for name in live)
    peak, step = current, "<inputs>"
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name in sizes and name not in live:
                live.add(name)
                current += sizes[name]
        if current > peak:
            peak, step = current, node.name or f"{node.op_type}#{i}"
        for name in {*node.input, *node.output}:
            if name in live and name not in outputs and last_use.get(name, -1) <= i:
                live.discard(name)
                current -= sizes[name]
    return int(peak), step


@dataclass
class PeakMemoryModel:
    """estimate_mb = baseline_mb + weights_factor * weights_mb + activations_factor * activations_mb."""

    baseline_mb: float = 0.0
    weights_factor: float = 1.0
    activations_factor: float = 1.0
    fitted_points: int = 0
    version: int = MODEL_VERSION

    def __post_init__(self) -> None:
        if self.version != MODEL_VERSION:
            raise BadInputError(f"PeakMemoryModel version {self.version} is not {MODEL_VERSION}")
        for name in ("baseline_mb", "weights_factor", "activations_factor"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise BadInputError(f"PeakMemoryModel.{name} must be a finite number >= 0, got {value}")

    def estimate_mb(self, breakdown: MemoryBreakdown) -> float:
        """The estimated peak memory in MB of a model with this breakdown."""
        return (self.baseline_mb + self.weights_factor * breakdown.weights_mb
                + self.activations_factor * breakdown.activations_mb)

    @classmethod
    def fit(cls, points: Sequence[tuple[MemoryBreakdown, float]],
            baseline_mb: Optional[float] = None) -> "PeakMemoryModel":
        """Fit on (breakdown, measured MB) pairs, minimizing relative error. With `baseline_mb`
        (the measured peak of a tiny model) only the factors are fitted, else the baseline too;
        factors stay >= 1, and at 1.0 with fewer than MIN_FIT_POINTS points."""
        points = list(points)
        if not points and baseline_mb is None:
            raise BadInputError("fitting a peak-memory model needs points or a measured baseline_mb")
        features = np.array([[b.weights_mb, b.activations_mb] for b, _ in points]).reshape(-1, 2)
        measured = np.array([float(m) for _, m in points])
        if np.any(measured <= 0):
            raise BadInputError("measured peak memory must be > 0 MB for every point")
        if len(points) < MIN_FIT_POINTS:
            base = baseline_mb if baseline_mb is not None else max(0.0, float(np.mean(measured - features.sum(1))))
            return cls(baseline_mb=float(base), fitted_points=len(points))
        # a factor is 1 + g with g >= 0: g is fitted on what one copy of each leaves unexplained
        rest = measured - features.sum(1) - (baseline_mb or 0.0)
        design = features if baseline_mb is not None else np.c_[features, np.ones(len(points))]
        coef = _nonneg_lstsq(design / measured[:, None], rest / measured)
        base = float(baseline_mb) if baseline_mb is not None else float(coef[2])
        return cls(baseline_mb=base, weights_factor=1.0 + float(coef[0]),
                   activations_factor=1.0 + float(coef[1]), fitted_points=len(points))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; from_dict(to_dict()) gives an equal model."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PeakMemoryModel":
        """Rebuild from to_dict() output, rejecting unknown keys."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise BadInputError(f"unknown PeakMemoryModel keys: {', '.join(unknown)}")
        return cls(**data)


def _nonneg_lstsq(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: the best of the unconstrained fits on each
    subset of columns that comes out non-negative (exact, and cheap for three columns)."""
    best, best_residual = np.zeros(design.shape[1]), float(np.sum(target ** 2))
    for k in range(1, design.shape[1] + 1):
        for cols in itertools.combinations(range(design.shape[1]), k):
            coef = np.zeros(design.shape[1])
            coef[list(cols)] = np.linalg.lstsq(design[:, cols], target, rcond=None)[0]
            residual = float(np.sum((design @ coef - target) ** 2))
            if np.all(coef >= 0) and residual < best_residual:
                best, best_residual = coef, residual
    return best


# ------------------------------------------------------------------ measured on a target

def baseline_onnx(path: str | os.PathLike) -> Path:
    """Write the smallest model a runtime will load (one Relu on 1x1x1x1): its measured peak
    memory is the runtime's session overhead."""
    import onnx
    from onnx import TensorProto, helper
    shape = [1, 1, 1, 1]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "baseline",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # old enough for every onnxruntime the agent supports
    onnx.save(model, str(path))
    return Path(path)


def measure_baseline(target: Any, **settings: Any) -> float:
    """The target's measured peak memory (MB) for the baseline model; settings go to
    `target.measure` (runs, min_seconds, ...)."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-baseline-") as tmp:
        return _measured_mb(target, baseline_onnx(Path(tmp) / "baseline.onnx"), settings)


def _measured_mb(target: Any, path: str | os.PathLike, settings: dict[str, Any]) -> float:
    m = target.measure(path, use_cache=False, **settings)
    if m.peak_memory_mb is None:
        raise BadInputError(f"{target.name} reports no peak memory for {path} (memory method: {m.memory_method})")
    return float(m.peak_memory_mb)


def check_peak_memory(target: Any, onnx_paths: Iterable[str | os.PathLike],
                      model: Optional[PeakMemoryModel] = None, fit_count: int = 5,
                      **settings: Any) -> dict[str, Any]:
    """Measure each artifact on `target` and compare with the estimate.

    Without `model`, one is fitted first: the baseline model measured on the target, the
    factors on the first `fit_count` artifacts; the errors are those of the others. With a
    model (fitted elsewhere), every artifact is checked. Settings go to `target.measure`."""
    paths = [Path(p) for p in onnx_paths]
    if not paths:
        raise BadInputError("check_peak_memory needs at least one ONNX artifact")
    points = [(onnx_memory(p), _measured_mb(target, p, settings)) for p in paths]
    held_out = list(range(len(points)))
    if model is None:
        if len(points) <= fit_count:
            raise BadInputError(f"need more than fit_count={fit_count} artifacts to fit and check")
        model = PeakMemoryModel.fit(points[:fit_count], baseline_mb=measure_baseline(target, **settings))
        held_out = held_out[fit_count:]
        split = f"baseline model and first {fit_count} artifacts fitted; errors on the other {len(held_out)}"
    else:
        split = f"model fitted elsewhere; errors on all {len(points)}"
    rows = [_row(path, breakdown, measured, model, i not in held_out)
            for i, (path, (breakdown, measured)) in enumerate(zip(paths, points))]
    return {"target": target.name, "split": split, "model": model.to_dict(), "tolerance": TOLERANCE,
            "models": rows, **error_summary([rows[i]["rel_error"] for i in held_out])}


def _row(path: Path, breakdown: MemoryBreakdown, measured: float, model: PeakMemoryModel,
         fitted: bool) -> dict[str, Any]:
    estimate = model.estimate_mb(breakdown)
    return {"path": str(path), "weights_mb": breakdown.weights_mb, "activations_mb": breakdown.activations_mb,
            "largest_step": breakdown.largest_step, "estimate_mb": estimate, "measured_mb": measured,
            "rel_error": (estimate - measured) / measured, "fitted": fitted}


def error_summary(errors: Sequence[float]) -> dict[str, Any]:
    """Share within TOLERANCE, median and max of the absolute relative errors."""
    absolute = [abs(e) for e in errors]
    return {"checked": len(absolute),
            "within_tolerance": sum(e <= TOLERANCE for e in absolute) / len(absolute),
            "median_error": statistics.median(absolute), "max_error": max(absolute)}
