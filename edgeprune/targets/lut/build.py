"""Build, check and use a latency table on a target.

build: for each kernel kind of the model, the kernel alone is exported (ONNX or TFLite, as the
target runs, at the table's precision) at a grid of channel counts on the target's channel
multiple, and benched on the target interleaved with the full model (KERNEL_PROTOCOL): its
value is its share of the full model's p50 times the median full-model p50 of the build.
FIT_SAMPLES random sub-networks, spread evenly among the kernel benches, are benched
interleaved with the full model (A/B), and the per-network overhead (with a cost per
activation or per weight element when it predicts held-out points better) is fitted through
their measured ratios (the scale through the full model's p50). Every finished measurement
is saved to the table at once, so an interrupted build resumes where it stopped.

check: SAMPLES random sub-networks (random per-layer keep ratios, a different seed from the
fit's), each benched interleaved with the full model, compared with the table's prediction
anchored at the full model's p50 of the same bench: the share
within +-10% of the measured p50, the median and the max error. The check is stored with
the table, and every prediction carries it.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from edgeprune.errors import BadInputError, TargetUnreachableError
from edgeprune.targets.lut.kernels import Layer, fixed_counts, model_layers, with_max
from edgeprune.targets.lut.memory import TOLERANCE as MEMORY_TOLERANCE
from edgeprune.targets.lut.memory import MemoryBreakdown, PeakMemoryModel, baseline_onnx, error_summary, onnx_memory
from edgeprune.targets.lut.table import KernelTable, LatencyTable, TableStore, grid_axis, model_signature, summarize
from edgeprune.targets.measurement import Measurement
from edgeprune.targets.session import ARTIFACT_RUNTIME

TABLE_VERSION = 2  # tables of another layout are never read (2: fit points hold weights)
GRID = (0.25, 0.5, 0.75, 1.0)  # shares of a kernel's unpruned channels measured per axis (on the multiple)
KERNEL_PROTOCOL = {"runs": 20, "min_seconds": 0.15, "warmup_seconds": 0.05}  # per round and side
KERNEL_ROUNDS = 2  # A/B rounds of a kernel against the full model
FIT_SAMPLES = 16  # random sub-networks benched against the full model to fit the per-network overhead
# (16, not 8: with 8 the leave-one-out choice between the whole-network models was a coin toss on
# emu-rpi4, see LatencyTable.fit)
COMPARE_ROUNDS = 3  # A/B rounds of a sub-network against the full model (fit and check)
KEEP_RANGE = (0.2, 1.0)  # per-group keep ratios of the random sub-networks
PROBE_KEEP = 0.3  # the heavily pruned copy that shows which counts sub-networks never change
CALIBRATION_SAMPLES = 8  # random images calibrate an int8 kernel: latency needs shapes
# An int8 table times all-int8 graphs, kernels and networks alike: the float rules (first and
# last layer, gates) would float a lone kernel's only layer, and the measured fallback reads
# weights, which a table does not have. Calibration choice and bias correction change values,
# not time.
INT8_TABLE_EXPORT = {"float_sensitive": False, "min_agreement": 0.0, "calibration": "minmax",
                     "bias_correction": False, "calibration_samples": CALIBRATION_SAMPLES, "check_samples": 0}


def sub_network(model: nn.Module, input_shape: Sequence[int], rng: np.random.Generator,
                keep: Tuple[float, float] = KEEP_RANGE, round_to: int = 1) -> nn.Module:
    """A copy of `model` with random per-group keep ratios on the channel multiple `round_to`
    (`on_multiple`: a group of at most one multiple keeps its channels)."""
    from edgeprune.pruning import group_roots, prune_group_ratios

    x = torch.zeros(1, *input_shape)
    roots = group_roots(model, x)
    ratios = on_multiple(model, dict(zip(roots, rng.uniform(*keep, len(roots)).tolist())), round_to)
    return prune_group_ratios(model, ratios, x, round_to)


def on_multiple(model: nn.Module, ratios: Dict[str, float], multiple: int) -> Dict[str, float]:
    """Keep ratios whose channel counts stay on `multiple`: a group no wider than one multiple
    keeps all its channels (the surgery would cut it to any count, and between multiples the
    runtime may be slower than the table says: onnxruntime x86 took 105 us at 16 input
    channels and 230 us at 18; ResNet-20 sub-networks cut that way were 62% within +-10%
    of the table, against 100% on the multiple)."""
    from edgeprune.pruning import out_channels

    modules = dict(model.named_modules())
    return {root: 1.0 if out_channels(modules[root]) <= multiple else keep for root, keep in ratios.items()}


def kernels_of(model: nn.Module, input_shape: Sequence[int], round_to: int = 1) -> List[Layer]:
    """The model's kernels, each knowing which of its counts sub-networks change."""
    from edgeprune.pruning import group_roots, prune_group_ratios

    full = model_layers(model, input_shape)
    if not full:
        raise BadInputError("the model has no Conv2d or Linear layer to build a latency table for")
    x = torch.zeros(1, *input_shape)
    roots = group_roots(model, x)
    probe = prune_group_ratios(model, {r: PROBE_KEEP for r in roots}, x, round_to)
    return model_layers(model, input_shape, fixed_counts(full, model_layers(probe, input_shape)))


def layers_for(table: LatencyTable, model: nn.Module, input_shape: Sequence[int]) -> List[Layer]:
    """A (sub-)network's kernels, matched by layer name to the kinds the table was built for."""
    layers = model_layers(model, input_shape)
    full = {}
    for layer in layers:
        key = table.layer_kinds.get(layer.name)
        if key in table.kernels:
            full[layer.name] = Layer(layer.name, table.kernels[key].kind, layer.cin, layer.cout, layer.out_elems)
    return with_max(layers, full)


def interleaved(kernels: int, fits: int) -> List[Tuple[str, int]]:
    """The build's order: ("kernel", i) and ("fit", j) jobs spread evenly through each other, so
    the fit's whole-model benches see the device's states over the build as the kernels' do
    (with all of them at the end, a MobileNetV2-224 table on x86-ort predicted 3% high on
    average: the host switched between two states, and the fit had seen one)."""
    jobs = [((i + 0.5) / kernels, "kernel", i) for i in range(kernels)] + \
        [((j + 0.5) / fits, "fit", j) for j in range(fits)]
    return [(job, index) for _, job, index in sorted(jobs)]


class TableBuilder:
    """Builds (or resumes) and checks the latency table of one model on one target."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], target: Any, precision: str = "fp32",
                 round_to: int = 1, name: str = "model", log: Callable[[str], None] = lambda m: None,
                 progress: bool = True, store: Optional[TableStore] = None) -> None:
        if precision not in ("fp32", "fp16", "int8"):
            raise BadInputError(f"a latency table's precision is fp32, fp16 or int8, got {precision!r}")
        self.model, self.input_shape = copy.deepcopy(model).eval(), list(input_shape)
        self.target, self.precision, self.name = target, precision, name
        self.round_to = max(1, round_to, int(getattr(target, "channel_multiple", 1) or 1))
        self.log, self.progress, self.store = log, progress, store or TableStore()
        self.fmt = "tflite" if target.runtime == "tflite" else "onnx"
        self.layers = kernels_of(self.model, self.input_shape, self.round_to)
        self._key: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ the table's identity

    def key(self) -> Dict[str, Any]:
        """Target identity (from the device itself), runtime and version, threads, precision and
        the model's kernels."""
        if self._key is None:
            info = self.target.check()
            runtime = ARTIFACT_RUNTIME[f".{self.fmt}"]
            runtimes = info.get("runtimes") or {}
            if runtime not in runtimes:
                raise TargetUnreachableError(f"{self.target.name}: runtime {runtime} is not on the device "
                                             f"(found: {', '.join(sorted(runtimes)) or 'none'})")
            dev = info.get("device") or {}
            emu = self.target.emulation
            self._key = {"table_version": TABLE_VERSION, "target": self.target.name, "hostname": dev.get("hostname"),
                         "cpu": dev.get("cpu"), "cores": dev.get("cores"), "emulation": vars(emu) if emu else None,
                         "runtime": runtime, "runtime_version": str(runtimes[runtime]),
                         "threads": self.target.default_threads(),
                         "precision": self.precision, "round_to": self.round_to,
                         "kernels": model_signature(self.layers, self.input_shape)}
        return self._key

    def load(self) -> Optional[LatencyTable]:
        """The complete table for this key, or None."""
        table = self.store.get(self.key())
        return table if table is not None and table.complete else None

    # ------------------------------------------------------------------ build

    def build(self, rebuild: bool = False) -> LatencyTable:
        """Measure what the table still lacks (everything when `rebuild`), fit, store."""
        from edgeprune._progress import progress

        table = None if rebuild else self.store.get(self.key())
        if table is None:
            table = self._empty()
        elif table.complete:
            self.log(f"{table.describe()}: already built")
            return table
        todo = [(k, p) for k, t in table.kernels.items() for p in t.missing()]
        fits = max(0, FIT_SAMPLES - len(table.fit_points))
        done = sum(len(t.values) for t in table.kernels.values()) + len(table.fit_points)
        self.log(f"latency table for {self.name} on {self.target.name}: {len(table.kernels)} kernel kinds, "
                 f"{len(todo)} kernel measurements and {fits} whole-model ones to go ({done} already done)")
        start = time.time() - table.build_seconds
        bar = progress(total=len(todo) + fits, desc="lut build", enabled=self.progress)
        with self.target.session(), tempfile.TemporaryDirectory(prefix="edgeprune-lut-") as tmp:
            full = self._export(self.model, self.input_shape, Path(tmp) / f"full.{self.fmt}")
            nets = self._fit_nets()
            for _ in range(len(table.fit_points)):
                next(nets)  # the same nets on a resume
            for job, index in interleaved(len(todo), fits):
                if job == "kernel":
                    kind_key, point = todo[index]
                    t = table.kernels[kind_key]
                    found = self._kernel_p50(t, point, full, Path(tmp))
                    table.shares[kind_key + "|" + ",".join(map(str, point))] = found
                    t.values[",".join(map(str, point))] = found["share"] * found["full_ms"]
                    table.measurements += KERNEL_ROUNDS
                else:
                    i = len(table.fit_points)
                    cmp = self.compare_network(full, next(nets), Path(tmp) / f"fit{i}")
                    table.fit_points.append({"ratio": cmp.b.p50_ms / cmp.a.p50_ms, "full_ms": cmp.a.p50_ms,
                                             **self._memory_point(cmp, Path(tmp) / f"fit{i}")})
                    table.measurements += COMPARE_ROUNDS  # a round is one bench process running both
                table.build_seconds = time.time() - start
                self.store.put(table)
                bar.update(1)
            if self.reads_memory and table.memory is None:
                baseline = self._baseline_mb(full, Path(tmp))
                table.memory = None if baseline is None else {"baseline_mb": baseline}
                table.measurements += KERNEL_ROUNDS
                self.store.put(table)
        table.rescale()
        full_point = table.features(layers_for(table, self.model, self.input_shape))
        table.full_sum, table.full_volume, table.full_weights = (full_point["sum_ms"], full_point["volume"],
                                                                 full_point["weights"])
        for point, net in zip(table.fit_points, self._fit_nets()):  # kernel sums need every kernel measured
            point.update(table.features(layers_for(table, net, self.input_shape)))
        bar.close()
        table.fit()
        table.memory = self._fit_memory(table)
        table.complete, table.build_seconds = True, time.time() - start
        self.store.put(table)
        chosen = (table.fit_choice or {}).get("model", "no")
        self.log(f"{table.describe()}, built in {table.build_seconds:.0f} s; a network = "
                 f"{table.scale:.3f} x (its kernels {table.per_element * 1e6:+.3g} ms per million activation "
                 f"elements {table.per_weight * 1e6:+.3g} ms per million weights {table.overhead:+.3f} ms; "
                 f"the {chosen} fit, chosen by leave-one-out error)")
        return table

    @property
    def reads_memory(self) -> bool:
        """The table fits a peak-memory model: fp32 ONNX only, as the estimate reads the fp32
        ONNX graph it exports of a candidate."""
        return self.fmt == "onnx" and self.precision == "fp32"

    def _baseline_mb(self, full: Path, tmp: Path) -> Optional[float]:
        """The runtime's own peak (a one-Relu model), read as the fit points' are: in an A/B
        bench, before the second model loads. A profile reads it after its runs, and a model
        that fast leaves a long list of run times (22.7 MB against 13.6-15.5 MB for ResNet-20's
        sub-networks read in their A/B benches)."""
        cmp = self.target.compare(full, baseline_onnx(tmp / "baseline.onnx"), rounds=KERNEL_ROUNDS,
                                  **KERNEL_PROTOCOL)
        return None if cmp.b.peak_memory_mb is None else float(cmp.b.peak_memory_mb)  # None: no memory model

    def _memory_point(self, cmp: Any, stem: Path) -> Dict[str, float]:
        """A benched sub-network's weights and peak live activations (bytes, read from its ONNX
        graph) and its measured peak memory: the points of the peak-memory fit and check."""
        if not self.reads_memory or cmp.b.peak_memory_mb is None:
            return {}
        found = onnx_memory(stem.with_suffix(".onnx"))
        return {"weights_bytes": found.weights_bytes, "activations_bytes": found.activations_bytes,
                "peak_mb": cmp.b.peak_memory_mb}

    def _fit_memory(self, table: LatencyTable) -> Optional[Dict[str, Any]]:
        """The peak-memory model (lut/memory.py) fitted on the fit's sub-networks, at the
        runtime's measured baseline; None unless `reads_memory`."""
        points = [(_breakdown(p), p["peak_mb"]) for p in table.fit_points if "peak_mb" in p]
        if table.memory is None or not points:
            return None
        model = PeakMemoryModel.fit(points, baseline_mb=table.memory["baseline_mb"])
        return {"baseline_mb": table.memory["baseline_mb"], "model": model.to_dict()}

    def _fit_nets(self):
        """The fit's random sub-networks, the same sequence on every call."""
        rng = np.random.default_rng([len(self.layers), 7])
        while True:
            yield sub_network(self.model, self.input_shape, rng, round_to=self.round_to)

    def _empty(self) -> LatencyTable:
        kernels: Dict[str, KernelTable] = {}
        for layer in self.layers:
            kind = layer.kind
            if kind.key not in kernels:
                step = kind.granularity() * (self.round_to if kind.op != "linear" else 1)
                axes = [grid_axis(top, step, GRID) for top in kind.axes_max()]
                kernels[kind.key] = KernelTable(kind, axes)
        return LatencyTable(self.key(), kernels, {l.name: l.kind.key for l in self.layers}, model=self.name)

    def _kernel_p50(self, t: KernelTable, point: Tuple[int, ...], full: Path, tmp: Path) -> Dict[str, float]:
        """The kernel alone at `point`, benched interleaved with the full model: its share of
        the full model's p50 (drift between one kernel's bench and the next falls out)."""
        cin, cout = t.kind.counts(point)
        module = t.kind.module(cin, cout)
        path = self._export(module, t.kind.input_shape(cin), tmp / f"kernel.{self.fmt}")
        cmp = self.target.compare(full, path, rounds=KERNEL_ROUNDS, **KERNEL_PROTOCOL)
        return {"share": cmp.b.p50_ms / cmp.a.p50_ms, "full_ms": cmp.a.p50_ms}

    def compare_network(self, full: Path, net: nn.Module, stem: Path) -> Any:
        """A (sub-)network exported as the table's artifacts and benched interleaved with the full
        model (A/B in one process): drift on the device falls on both alike."""
        path = self._export(net, self.input_shape, stem.with_suffix(f".{self.fmt}"))
        return self.target.compare(full, path, rounds=COMPARE_ROUNDS)

    def _memory_row(self, table: LatencyTable, cmp: Any, stem: Path) -> Dict[str, float]:
        """A check sub-network's estimated and measured peak memory, when the table has the model."""
        found = self._memory_point(cmp, stem)
        if not found or not (table.memory or {}).get("model"):
            return {}
        estimate = peak_memory_mb(table, _breakdown(found))
        return {"peak_estimate_mb": round(estimate, 2), "peak_measured_mb": round(found["peak_mb"], 2),
                "peak_error": round(estimate / found["peak_mb"] - 1, 4)}

    def _export(self, module: nn.Module, shape: Sequence[int], path: Path) -> Path:
        from edgeprune.export import export_artifact

        data, options = None, {}
        if self.precision == "int8":
            data = np.random.default_rng(0).standard_normal((CALIBRATION_SAMPLES, *shape)).astype(np.float32)
            options = INT8_TABLE_EXPORT
        return export_artifact(module, path, precision=self.precision, data=data, input_shape=list(shape), **options)

    # ------------------------------------------------------------------ check

    def check(self, table: LatencyTable, samples: int, seed: int = 1) -> Dict[str, Any]:
        """`samples` random sub-networks, predicted and measured; stored with the table. Each is
        benched interleaved with the full model, and its prediction is anchored at the full
        model's p50 of the same bench, as the Evaluator anchors predictions at the baseline it
        measured."""
        from edgeprune._progress import progress

        rng = np.random.default_rng([seed, 11])
        rows: List[Dict[str, Any]] = []
        bar = progress(total=samples, desc="lut check", enabled=self.progress)
        with self.target.session(), tempfile.TemporaryDirectory(prefix="edgeprune-lut-check-") as tmp:
            full = self._export(self.model, self.input_shape, Path(tmp) / f"full.{self.fmt}")
            for i in range(samples):
                net = sub_network(self.model, self.input_shape, rng, round_to=self.round_to)
                layers = layers_for(table, net, self.input_shape)
                cmp = self.compare_network(full, net, Path(tmp) / f"check{i}")
                predicted = table.predict_ratio(layers) * cmp.a.p50_ms
                rows.append({"predicted_ms": round(predicted, 4), "measured_ms": round(cmp.b.p50_ms, 4),
                             "full_ms": round(cmp.a.p50_ms, 4), "unanchored_ms": round(table.predict_ms(layers), 4),
                             "error": round(predicted / cmp.b.p50_ms - 1, 4), "source": cmp.b.source,
                             **self._memory_row(table, cmp, Path(tmp) / f"check{i}")})
                bar.update(1)
        bar.close()
        result = {**summarize([abs(r["error"]) for r in rows]), "seed": seed,
                  "unanchored": summarize([abs(r["unanchored_ms"] / r["measured_ms"] - 1) for r in rows]),
                  "measured_source": rows[0]["source"] if rows else None, "rows": rows}
        memory = [r["peak_error"] for r in rows if "peak_error" in r]
        if memory:
            result["peak_memory"] = {**error_summary(memory), "tolerance": MEMORY_TOLERANCE}
        table.check = {k: v for k, v in result.items() if k != "rows"}
        self.store.put(table)
        return result


def predict_p50(table: LatencyTable, model: nn.Module, input_shape: Sequence[int],
                baseline_p50_ms: Optional[float] = None) -> float:
    """The table's p50 (ms) for `model`. With `baseline_p50_ms` (the full model measured today)
    the prediction is anchored there: baseline x the table's ratio; else as on the day of the build."""
    layers = layers_for(table, model, input_shape)
    return table.predict_ratio(layers) * baseline_p50_ms if baseline_p50_ms else table.predict_ms(layers)


def _breakdown(point: Dict[str, float]) -> MemoryBreakdown:
    """The memory breakdown a fit or check point holds (`TableBuilder._memory_point`)."""
    return MemoryBreakdown(int(point["weights_bytes"]), int(point["activations_bytes"]), "")


def peak_memory_mb(table: LatencyTable, breakdown: MemoryBreakdown) -> float:
    """The table's peak-memory estimate (MB) for a graph with this breakdown."""
    return PeakMemoryModel.from_dict(table.memory["model"]).estimate_mb(breakdown)


def predict_peak_mb(table: LatencyTable, model: nn.Module, input_shape: Sequence[int]) -> Optional[float]:
    """The peak-memory estimate (MB) for `model`, read from its fp32 ONNX graph; None when the
    table has no memory model (a TFLite table, or a target that reports no peak memory)."""
    if not (table.memory or {}).get("model"):
        return None
    from edgeprune.export import export_artifact

    with tempfile.TemporaryDirectory(prefix="edgeprune-peak-") as tmp:
        path = export_artifact(model, Path(tmp) / "net.onnx", input_shape=list(input_shape))
        return peak_memory_mb(table, onnx_memory(path))


def predicted_measurement(table: LatencyTable, model: nn.Module, input_shape: Sequence[int], target: str,
                          baseline_p50_ms: Optional[float] = None) -> Measurement:
    """`predict_p50` as a Measurement with `source: predicted` and the table's measured error
    (nothing of it was run)."""
    p50 = predict_p50(table, model, input_shape, baseline_p50_ms)
    k = table.key
    err = table.error()
    anchor = "anchored at the baseline measured in this run" if baseline_p50_ms else "as on the day of the build"
    return Measurement(target=target, source="predicted", emulated=bool(k.get("emulation")),
                       runtime={"name": k["runtime"], "version": k["runtime_version"]}, threads=k["threads"],
                       warmup=0, runs=0, times_ms=[], latency_ms={"p50": p50, "p90": p50, "p99": p50, "mean": p50,
                                                                  "std": 0.0, "cv": 0.0},
                       peak_memory_mb=None, memory_method=None, model_bytes=0, model_sha256="", load_ms=None,
                       device={"hostname": k["hostname"], "cpu": k["cpu"], "cores": k["cores"],
                               "predictor": {"kind": "latency table", "anchor": anchor, **err}},
                       notes=[f"predicted by the latency table, {anchor} ({err.get('within_10pct')} of "
                              f"{err.get('samples')} {err['measured_on']} within +-10%)"])
