"""A latency table: per kernel kind, the p50 measured at a grid of channel counts; a sub-network's
latency is the sum of its kernels (interpolated between grid points) plus a per-network
overhead and at most one term for what a kernel benched alone does not pay as it does in the
network (its activations' copies, or its weights' reads), fitted on whole-model measurements
(NetAdapt, HALP and nn-Meter use per-layer tables; this one is built on the user's own target).

Tables are stored in the measurement cache's sqlite file, keyed by the target's identity
(hostname, CPU, cores), the runtime and its version, threads, precision and the model's
kernels: a table built for another key is never used.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgeprune.targets.cache import connect, default_cache_path
from edgeprune.targets.lut.kernels import KernelKind, Layer

_SCHEMA = "CREATE TABLE IF NOT EXISTS latency_tables (key TEXT PRIMARY KEY, created REAL, data TEXT)"
WITHIN = 0.10  # a prediction is good when within this share of the measured p50
PARSIMONY = 0.1  # a two-term whole-network fit must cut the leave-one-out error by this share
# The second term a whole-network fit may add to the overhead: its name -> the fit point's feature
TERMS = {"activations": "volume", "weights": "weights"}


@dataclass
class KernelTable:
    """p50 (ms) of one kernel kind at each grid point; `grid` per axis (one axis for a depthwise
    conv or a conv with a fixed side, two for cin x cout, none when both are fixed). Points lie
    on the channel multiple; between multiples the runtime may do much worse than linear
    (onnxruntime x86: 105 us at 16 input channels, 230 us at 18), so the table is checked,
    and random search samples, on the multiple."""

    kind: KernelKind
    grid: List[List[int]]
    values: Dict[str, float] = field(default_factory=dict)  # "c1,c2" -> p50 ms

    def points(self) -> List[Tuple[int, ...]]:
        """Every grid point, in the order a build measures them."""
        out: List[Tuple[int, ...]] = [()]
        for axis in self.grid:
            out = [p + (c,) for p in out for c in axis]
        return out

    def missing(self) -> List[Tuple[int, ...]]:
        return [p for p in self.points() if _pkey(p) not in self.values]

    def lookup(self, coords: Sequence[int]) -> float:
        """Multilinear interpolation between grid points, extrapolating linearly past the edges
        (never below a tenth of the smallest value measured)."""
        floor = 0.1 * min(self.values.values())
        return max(self._interp(tuple(coords), 0, ()), floor)

    def _interp(self, coords: Tuple[int, ...], axis: int, fixed: Tuple[int, ...]) -> float:
        if axis == len(self.grid):
            return self.values[_pkey(fixed)]
        grid = self.grid[axis]
        if len(grid) == 1:
            return self._interp(coords, axis + 1, fixed + (grid[0],))
        x = coords[axis]
        i = int(np.searchsorted(grid, x))
        i = min(max(i, 1), len(grid) - 1)
        lo, hi = grid[i - 1], grid[i]
        a = self._interp(coords, axis + 1, fixed + (lo,))
        b = self._interp(coords, axis + 1, fixed + (hi,))
        return a + (b - a) * (x - lo) / (hi - lo)

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind.to_dict(), "grid": self.grid, "values": self.values}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "KernelTable":
        return cls(KernelKind.from_dict(d["kind"]), [list(a) for a in d["grid"]], dict(d["values"]))


def _pkey(point: Sequence[int]) -> str:
    return ",".join(map(str, point))


def grid_axis(top: int, step: int, fractions: Sequence[float]) -> List[int]:
    """Channel counts at `fractions` of `top`, on multiples of `step` (at least one step)."""
    counts = {min(top, max(step, int(round(top * f / step)) * step)) for f in fractions}
    return sorted(counts | {top})


@dataclass
class LatencyTable:
    """The tables of one model's kernels on one target, runtime, thread count and precision,
    with the whole-network fit and, once checked, its measured error."""

    key: Dict[str, Any]
    kernels: Dict[str, KernelTable]
    layer_kinds: Dict[str, str]  # layer name -> kernel kind key
    model: str = "model"
    full_sum: float = 0.0  # the full model's sum of kernels (ms)
    full_volume: int = 0  # the full model's kernel output elements
    scale: float = 1.0
    per_element: float = 0.0  # ms per kernel output element: the operators between kernels
    overhead: float = 0.0  # per-network overhead, in kernel-sum ms
    # {"sum_ms", "volume", "weights", "ratio", "full_ms"} per fit sub-network
    fit_points: List[Dict[str, float]] = field(default_factory=list)
    shares: Dict[str, Dict[str, float]] = field(default_factory=dict)  # "kind|point" -> {"share", "full_ms"}
    check: Optional[Dict[str, Any]] = None
    measurements: int = 0
    build_seconds: float = 0.0
    complete: bool = False
    memory: Optional[Dict[str, Any]] = None  # the peak-memory model's parameters, when fitted
    fit_choice: Optional[Dict[str, Any]] = None  # which whole-network model fit() chose, and why
    full_weights: int = 0  # the full model's kernel weight elements
    per_weight: float = 0.0  # ms per kernel weight element: weights read from memory in the network

    @property
    def cache_key(self) -> str:
        return table_key(self.key)

    def layer_sum(self, layers: Sequence[Layer]) -> float:
        """Sum of the tabled kernels of `layers` (ms); layers of kinds not in the table count 0."""
        total = 0.0
        for layer in layers:
            t = self.kernels.get(layer.kind.key)
            if t is not None and t.values:
                total += t.lookup(layer.coords)
        return total

    def rescale(self) -> None:
        """Kernel values from their shares of the full model, all at the median full-model p50 of
        the build (one clock for every kernel)."""
        if not self.shares:
            return
        full_ms = float(np.median([v["full_ms"] for v in self.shares.values()]))
        for name, v in self.shares.items():
            kind, point = name.split("|")
            self.kernels[kind].values[point] = v["share"] * full_ms

    def features(self, layers: Sequence[Layer]) -> Dict[str, float]:
        """What the whole-network model reads of a (sub-)network, as a fit point holds it."""
        return {"sum_ms": self.layer_sum(layers), "volume": volume(layers), "weights": weights(layers)}

    def predict_ms(self, layers: Sequence[Layer]) -> float:
        """The absolute p50, as on the day of the build."""
        return max(self.scale * _cost(self.features(layers), self._fitted()), 1e-6)

    def predict_ratio(self, layers: Sequence[Layer]) -> float:
        """p50 of these layers over the full model's: what a prediction anchored at a baseline
        measured today multiplies (drift on the device falls out)."""
        return self._ratio(self.features(layers), self._fitted())

    def _fitted(self) -> Dict[str, float]:
        return {"volume": self.per_element, "weights": self.per_weight, "overhead": self.overhead}

    def _ratio(self, point: Dict[str, float], coef: Dict[str, float]) -> float:
        """A network's p50 over the full model's, for its kernel sum, activation volume and weights
        (`point`, as a fit point holds them), at the costs `coef` (feature -> ms per unit, and
        "overhead"; the fitted ones or a candidate fit's)."""
        return max(_cost(point, coef), 1e-9) / max(_cost(self._full_point(), coef), 1e-9)

    def _full_point(self) -> Dict[str, float]:
        return {"sum_ms": self.full_sum, "volume": self.full_volume, "weights": self.full_weights}

    def fit(self) -> None:
        """The overhead and at most one more term, by least squares through the fit points'
        measured B/A ratios r: cost_b = r * cost_a, where cost = kernel sum + c * feature + u is
        linear in (c, u); the scale through the full model's p50s.

        Three models compete: the overhead alone, and the overhead with a cost per activation
        element or per weight element (either sign). A two-term model wins when its
        leave-one-out error on the fit points is lower than the overhead's by PARSIMONY, the
        lower of the two when both do (`fit_choice` says which, with every error).
        - Activations: the operators between kernels (adds, pools, layout changes) less what a
          kernel benched alone spends copying its input and output. On x86-ort one
          MobileNetV2-224 table took a negative cost, which put 30 held-out sub-networks at 30/30
          within +-10% against 28/30 without; for ResNet-20 at 28x28 the overhead alone ranks better.
        - Weights: a kernel benched alone runs with its weights in cache; in the network each
          kernel's weights are read from memory once per inference. On emu-rpi4 (TFLite/XNNPACK),
          through 16 of 58 measured MobileNetV2-224 sub-networks, the choice between the
          overhead and activations put the other 42 at 90% within +-10% on average, the choice
          among all three at 97% (README, "Latency tables")."""
        pts = self.fit_points
        if not pts:
            return
        models: Dict[str, Optional[str]] = {"overhead": None}  # name -> the feature of its second term
        if len(pts) >= 4:  # two parameters need points left over to be judged on
            models.update({f"{term}+overhead": feature for term, feature in TERMS.items()})
        loo = {name: self._loo_error(pts, feature) for name, feature in models.items()} if len(models) > 1 else {}
        choice = "overhead"  # the simpler model, unless a second term clearly predicts better
        if loo:
            best = min((name for name in models if name != "overhead"), key=loo.get)
            if loo[best] < (1.0 - PARSIMONY) * loo["overhead"]:
                choice = best
        coef = self._solve(pts, models[choice])
        self.per_element, self.per_weight = float(coef.get("volume", 0.0)), float(coef.get("weights", 0.0))
        self.overhead = float(max(coef["overhead"], -0.9 * min(p["sum_ms"] for p in pts)))
        self.fit_choice = {"model": choice, "loo_mean_abs_error": {k: round(v, 4) for k, v in loo.items()}}
        full_ms = float(np.median([p["full_ms"] for p in pts]))
        self.scale = full_ms / max(_cost(self._full_point(), self._fitted()), 1e-9)

    def _solve(self, pts: Sequence[Dict[str, float]], feature: Optional[str]) -> Dict[str, float]:
        """{feature: c, "overhead": u} by least squares through `pts` (the overhead alone when
        `feature` is None)."""
        r = np.array([p["ratio"] for p in pts])
        y = np.array([p["sum_ms"] for p in pts]) - r * self.full_sum
        if feature is None:
            return {"overhead": float(np.linalg.lstsq((r - 1.0)[:, None], y, rcond=None)[0][0])}
        a = np.stack([r * self._full_point()[feature] - np.array([p.get(feature, 0.0) for p in pts]), r - 1.0], axis=1)
        c, u = np.linalg.lstsq(a, y, rcond=None)[0]
        return {feature: float(c), "overhead": float(u)}

    def _loo_error(self, pts: Sequence[Dict[str, float]], feature: Optional[str]) -> float:
        """Mean |relative error| of each fit point's ratio, predicted by a fit without it."""
        errs = []
        for i, p in enumerate(pts):
            coef = self._solve([q for j, q in enumerate(pts) if j != i], feature)
            errs.append(abs(self._ratio(p, coef) / p["ratio"] - 1.0))
        return float(np.mean(errs))

    def error(self) -> Dict[str, Any]:
        """What a prediction carries: the checked error when there is one, else the fit's."""
        if self.check:
            found = {k: self.check[k] for k in ("samples", "within_10pct", "median_abs_error", "max_abs_error")}
            return {**found, "measured_on": "held-out random sub-networks (lut check)"}
        errs = [abs(self._ratio(p, self._fitted()) / p["ratio"] - 1.0) for p in self.fit_points]
        return {**summarize(errs), "measured_on": "the fit's own sub-networks (not held out: run lut check)"}

    def describe(self) -> str:
        k = self.key
        return (f"latency table for {self.model} on {k['target']} ({k['runtime']} {k['runtime_version']}, "
                f"{k['threads']} thread(s), {k['precision']}): {len(self.kernels)} kernel kinds, "
                f"{self.measurements} device measurements")

    def to_dict(self) -> Dict[str, Any]:
        return {"key": self.key, "kernels": {k: t.to_dict() for k, t in self.kernels.items()},
                "layer_kinds": self.layer_kinds, "model": self.model, "full_sum": self.full_sum,
                "full_volume": self.full_volume, "scale": self.scale, "per_element": self.per_element,
                "overhead": self.overhead,
                "fit_points": self.fit_points, "shares": self.shares, "check": self.check, "measurements": self.measurements,
                "build_seconds": self.build_seconds, "complete": self.complete, "memory": self.memory,
                "fit_choice": self.fit_choice, "full_weights": self.full_weights, "per_weight": self.per_weight}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LatencyTable":
        return cls(d["key"], {k: KernelTable.from_dict(t) for k, t in d["kernels"].items()}, d["layer_kinds"],
                   d["model"], d["full_sum"], d["full_volume"], d["scale"], d["per_element"], d["overhead"],
                   d["fit_points"], d.get("shares", {}),
                   d.get("check"),
                   d.get("measurements", 0), d.get("build_seconds", 0.0), d.get("complete", False), d.get("memory"),
                   d.get("fit_choice"), d.get("full_weights", 0), d.get("per_weight", 0.0))


def _cost(point: Dict[str, float], coef: Dict[str, float]) -> float:
    """A network's cost in kernel-sum ms: its kernel sum, the overhead and the fitted term."""
    return point["sum_ms"] + coef.get("overhead", 0.0) + sum(
        c * point.get(f, 0.0) for f, c in coef.items() if f != "overhead")


def summarize(errors: Sequence[float]) -> Dict[str, Any]:
    """share within +-10%, median and max absolute relative error."""
    if not errors:
        return {"samples": 0, "within_10pct": None, "median_abs_error": None, "max_abs_error": None}
    e = sorted(errors)
    return {"samples": len(e), "within_10pct": round(sum(x <= WITHIN for x in e) / len(e), 4),
            "median_abs_error": round(float(np.median(e)), 4), "max_abs_error": round(e[-1], 4)}


def volume(layers: Sequence[Layer]) -> int:
    """Elements the kernels write: what adds, pools, concats and layout changes move after them."""
    return sum(layer.out_elems for layer in layers)


def weights(layers: Sequence[Layer]) -> int:
    """Elements of the kernels' weights: what a network reads from memory once per inference."""
    return sum(layer.weight_elems for layer in layers)


def table_key(key: Dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def model_signature(layers: Sequence[Layer], input_shape: Sequence[int]) -> str:
    """A short hash of the model's kernels (kinds in call order) and input: what the table covers."""
    text = json.dumps([list(input_shape)] + [[l.name, l.kind.key] for l in layers])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TableStore:
    """Latency tables in the measurement cache's sqlite file; each write one transaction."""

    def __init__(self, path: Any = None) -> None:
        self.path = path or default_cache_path()

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, _SCHEMA)

    def get(self, key: Dict[str, Any]) -> Optional[LatencyTable]:
        conn = self._connect()
        try:
            row = conn.execute("SELECT data FROM latency_tables WHERE key = ?", (table_key(key),)).fetchone()
        finally:
            conn.close()
        return LatencyTable.from_dict(json.loads(row[0])) if row else None

    def put(self, table: LatencyTable) -> None:
        conn = self._connect()
        try:
            with conn:
                conn.execute("INSERT OR REPLACE INTO latency_tables VALUES (?, ?, ?)",
                             (table.cache_key, time.time(), json.dumps(table.to_dict())))
        finally:
            conn.close()
