"""PyTorch -> ONNX (static shapes, input "input", output "logits") in fp32, fp16, int8 and dynamic.

int8 is static QDQ quantization by onnxruntime.quantization: int8 weights per output channel,
int8 activations calibrated on samples of the data set (MinMax or percentile ranges, or the
better of them measured on those samples). Nodes can be kept in float (mixed precision) by
torch module name or ONNX node name.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
from torch import nn

from edgeprune.errors import BadInputError
from edgeprune.export._common import first_line, sqnr_db, top1_agreement
from edgeprune.export.config import CALIBRATIONS

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
              "MatMulInteger", "DynamicQuantizeLinear"}
# Percentile ranges clip the rarest 0.001% or 0.01% of calibration values, which MinMax spends
# most int8 levels on. Measured (top-1 agreement with fp32, 1000 MNIST-32 samples) on
# briefly trained SE/ghost/grouped nets: ghostnet 0.910 -> 0.953, efficientnet 0.974 -> 0.988,
# but resnext 0.987 -> 0.981: no single choice wins, so "auto" measures them on the data.
CALIBRATION_CANDIDATES = ("minmax", "percentile:99.999", "percentile:99.99")
_INT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4,
              onnx.TensorProto.UINT4, onnx.TensorProto.INT16, onnx.TensorProto.UINT16}


def torch_to_onnx(model: nn.Module, input_shape: Sequence[int], path: Path, opset: int = 17,
                  batch_size: int = 1, exporter: str = "torchscript") -> None:
    """Export `model` in fp32 with a static [batch, C, H, W] input, then check the file."""
    example = torch.zeros(batch_size, *input_shape)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model.eval(), (example,), str(path), input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], opset_version=max(opset, 18 if exporter == "dynamo" else opset),
                do_constant_folding=True, dynamo=exporter == "dynamo",
            )
    except Exception as exc:  # torch raises many types; the user needs the first line
        raise BadInputError(f"cannot export to ONNX (unsupported op?): {first_line(exc)}") from None
    check_onnx(path)


def edge_padded_maxpools(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace MaxPool's implicit padding (pads, ceil_mode) by an edge Pad (copies of the edge).

    onnx2tf pads such pools with the float minimum, which int8 calibration then takes as the
    tensor's range (scale ~1e36: the model collapses). Every pooling window that touches the
    padding also holds the edge row/column it copies, so the max, hence the output, is unchanged.
    """
    from onnx import helper

    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.input, *model.graph.value_info)}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "MaxPool" and len(shapes.get(node.input[0], [])) == 4:
            nodes.extend(_edge_pad(node, shapes[node.input[0]], helper))
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _edge_pad(node: onnx.NodeProto, shape: List[int], helper) -> List[onnx.NodeProto]:
    """A Pad(mode="edge") node in front of the pool, which is then set to no padding."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return []
    kernel, strides = list(attrs["kernel_shape"]), list(attrs.get("strides", [1, 1]))
    dilations, pads = list(attrs.get("dilations", [1, 1])), list(attrs.get("pads", [0, 0, 0, 0]))
    ceil = bool(attrs.get("ceil_mode", 0))
    if not ceil and not any(pads):
        return []
    ends = []
    for axis, (size, k, st, dil) in enumerate(zip(shape[2:], kernel, strides, dilations)):
        begin, end = pads[axis], pads[axis + 2]
        span = size + begin + end - dil * (k - 1) - 1
        out = (-(-span // st) if ceil else span // st) + 1
        if ceil and (out - 1) * st >= size + begin:  # PyTorch: the last window starts inside
            out -= 1
        ends.append(max(0, (out - 1) * st + dil * (k - 1) + 1 - size - begin))
    kept = [a for a in node.attribute if a.name not in ("pads", "ceil_mode")]
    del node.attribute[:]
    node.attribute.extend(kept)
    if not any(pads[:2]) and not any(ends):
        return []
    name = f"{node.name or node.output[0]}_edge_pad"
    amounts = helper.make_tensor(f"{name}_pads", onnx.TensorProto.INT64, [8], [0, 0, *pads[:2], 0, 0, *ends])
    const = helper.make_node("Constant", [], [f"{name}_pads"], value=amounts)
    pad = helper.make_node("Pad", [node.input[0], f"{name}_pads"], [f"{name}_out"], mode="edge")
    node.input[0] = f"{name}_out"
    return [const, pad]


def check_onnx(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file; a truncated or invalid file is a BadInputError."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise BadInputError(f"{Path(path).name} is not a valid ONNX model: {first_line(exc)}") from None
    return model


def to_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and arithmetic; the input and output stay float32 (Cast at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        model16 = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _topological_sort(model16.graph)
    onnx.save(model16, str(dst))
    check_onnx(dst)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its inputs' producers (the fp16 pass appends Casts)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise BadInputError("the ONNX graph has a cycle or a dangling input")
        for node in progress:
            ready.update(node.output)
        ordered.extend(progress)
        pending = [n for n in pending if n not in progress]
    del graph.node[:]
    graph.node.extend(ordered)


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, per_channel: bool = True,
                  keep_float: Iterable[str] = (), method: str = "minmax", bias_correction: bool = False,
                  min_agreement: float = 0.0, checks: Optional[np.ndarray] = None,
                  keep_int8: Iterable[str] = (), floor: float = 0.0) -> str:
    """Static QDQ int8 (weights and activations) calibrated on `calibration` (NCHW), with the
    nodes in `keep_float` left in float. Returns the calibration used (recorded in the file's
    metadata as edgeprune.calibration); `method="auto"` measures the candidates first, bias
    correction among them. Below `min_agreement` top-1 agreement with float on the `checks`
    samples (the calibration ones if None), the costliest nodes (less `keep_int8`) move to float
    until it agrees, past their share of the graph while below `floor` (edgeprune.export.fallback)."""
    from edgeprune.export import fallback
    from edgeprune.export.runtime import load_runner

    model = onnx.load(str(src))
    exclude = resolve_nodes(model, keep_float)
    if method == "auto":
        method = _best_calibration(src, dst, calibration, per_channel, exclude, bias_correction)
    else:
        method += "+bias_correction" if bias_correction else ""
        quantize_as(src, dst, calibration, per_channel, exclude, method)
    if min_agreement > 0:
        checks = calibration if checks is None else checks
        reference = load_runner(src).run(checks)
        with tempfile.TemporaryDirectory(prefix="edgeprune-fallback-") as tmp:
            def build(floated: List[str]) -> Tuple[Path, Tuple[float, float]]:
                out = Path(tmp) / f"fallback-{len(floated)}.onnx"
                quantize_as(src, out, calibration, per_channel, [*exclude, *floated], method)
                return out, _score(out, checks, reference)

            def ranked() -> List[List[str]]:
                pinned = {*exclude, *keep_int8}
                return [[n for n in names if n not in pinned] for names, _ in fallback.costly_nodes(src, dst, calibration)]

            chosen, _, floated = fallback.ladder(dst, _score(dst, checks, reference), min_agreement, ranked, build, floor)
            if floated:
                dst.write_bytes(chosen.read_bytes())
                exclude, method = [*exclude, *floated], f"{method}+float_fallback:{len(floated)}"
    model = onnx.load(str(dst))
    compact_names(model.graph, keep=exclude)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "edgeprune.calibration": method})
    onnx.save(model, str(dst))
    check_onnx(dst)
    return method


def quantize_as(src: Path, dst: Path, calibration: np.ndarray, per_channel: bool, exclude: List[str],
                 method: str) -> None:
    """quantize_static under a calibration name as quantize_int8 returns it ("minmax+bias_correction")."""
    kind, _, extra = method.partition("+")
    with tempfile.TemporaryDirectory(prefix="edgeprune-calibration-") as tmp:
        source = src
        if "bias_correction" in extra:
            source = _corrected(src, Path(tmp) / "bc.onnx", calibration, per_channel, exclude)
        _quantize_static(source, dst, calibration, per_channel, exclude, kind)


def _quantize_static(src: Path, dst: Path, calibration: np.ndarray, per_channel: bool,
                     exclude: List[str], method: str) -> None:
    """onnxruntime's quantize_static with `method`: "minmax" or "percentile[:P]"."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kind, _, percentile = method.partition(":")
    if kind not in ("minmax", "percentile"):
        raise BadInputError(f"calibration must be one of {', '.join(CALIBRATIONS)}; got {method!r}")
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if kind == "percentile":
        extra["CalibPercentile"] = float(percentile or 99.999)
    try:
        with _quiet():
            quantize_static(
                str(src), str(dst), _CalibrationReader(calibration, _input_batch(onnx.load(str(src)))),
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax if kind == "minmax" else CalibrationMethod.Percentile,
                extra_options=extra,
            )
    except Exception as exc:
        raise BadInputError(f"int8 quantization failed: {first_line(exc)}") from None


def _best_calibration(src: Path, dst: Path, calibration: np.ndarray, per_channel: bool,
                      exclude: List[str], bias_correction: bool) -> str:
    """Quantize with each candidate calibration (then the best of them with bias correction);
    keep at `dst` the one whose logits agree best with fp32 on the calibration samples: top-1
    agreement first, then SQNR."""
    from edgeprune.export.runtime import load_runner

    reference = load_runner(src).run(calibration)
    with tempfile.TemporaryDirectory(prefix="edgeprune-calibration-") as tmp:
        work = Path(tmp)
        tried = {m: _try_calibration(src, work / f"{i}.onnx", calibration, per_channel, exclude, m, reference)
                 for i, m in enumerate(CALIBRATION_CANDIDATES)}
        if bias_correction:
            method = max(tried, key=lambda m: tried[m][0])
            corrected = _corrected(src, work / "bc.onnx", calibration, per_channel, exclude)
            tried[f"{method}+bias_correction"] = _try_calibration(
                corrected, work / "bc-int8.onnx", calibration, per_channel, exclude, method, reference)
        best = max(tried, key=lambda m: tried[m][0])
        dst.write_bytes(tried[best][1].read_bytes())
    return best


def _corrected(src: Path, out: Path, calibration: np.ndarray, per_channel: bool, exclude: List[str]) -> Path:
    """The fp32 file with bias correction (the `exclude`d nodes stay float), written to `out`."""
    from edgeprune.export._bias_correction import bias_corrected

    onnx.save(bias_corrected(onnx.load(str(src)), calibration, exclude, per_channel), str(out))
    return out


def _try_calibration(src: Path, out: Path, calibration: np.ndarray, per_channel: bool, exclude: List[str],
                     method: str, reference: np.ndarray) -> Tuple[Tuple[float, float], Path]:
    """((top-1 agreement, SQNR) with `reference` on the calibration samples, the int8 file)."""
    _quantize_static(src, out, calibration, per_channel, exclude, method)
    return _score(out, calibration, reference), out


def _score(artifact: Path, calibration: np.ndarray, reference: np.ndarray) -> Tuple[float, float]:
    """(top-1 agreement, SQNR dB) of `artifact`'s logits with the float `reference` ones."""
    from edgeprune.export.runtime import load_runner

    logits = load_runner(artifact).run(calibration)
    return top1_agreement(reference, logits), sqnr_db(reference, logits)


def compact_names(graph: onnx.GraphProto, keep: Iterable[str] = ()) -> None:
    """Give tensors and Q/DQ nodes short names; keep the graph's input/output, weighted nodes'
    and the names in `keep` (the nodes kept in float, which float_layers reports).

    QDQ quantization adds two nodes and three initializers per tensor, each named after the
    tensor's long path: on a small pruned net those names weigh as much as its int8 weights.
    """
    kept = set(keep)
    io_names = {v.name for v in (*graph.input, *graph.output)}
    names: Dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in io_names:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for info in graph.value_info:
        info.name = short(info.name)
    for i, node in enumerate(graph.node):
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        if node.op_type not in WEIGHTED_OPS and node.name not in kept:
            node.name = f"n{i}"


def quantize_dynamic(src: Path, dst: Path, per_channel: bool = True) -> None:
    """Dynamic-range int8: int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    try:
        with _quiet():
            # ConvInteger in onnxruntime's CPU provider takes uint8 weights only
            ort_quantize_dynamic(str(src), str(dst), per_channel=per_channel,
                                 weight_type=QuantType.QUInt8)
    except Exception as exc:
        raise BadInputError(f"dynamic quantization failed: {first_line(exc)}") from None
    check_onnx(dst)


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over NCHW samples, in batches of the model's size."""

    def __init__(self, x: np.ndarray, batch: int):
        usable = len(x) - len(x) % batch
        if usable == 0:
            raise BadInputError(f"need at least {batch} calibration samples, got {len(x)}")
        self._batches: Iterator[np.ndarray] = iter(np.split(x[:usable], usable // batch))

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:  # part of the reader protocol; one pass is all MinMax needs
        pass


def _input_batch(model: onnx.ModelProto) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return max(1, dims[0].dim_value) if dims else 1


def resolve_nodes(model: onnx.ModelProto, names: Iterable[str]) -> List[str]:
    """Map torch module names or ONNX node names to the ONNX nodes they denote."""
    nodes = [n.name for n in model.graph.node]
    found: List[str] = []
    for name in names:
        hits = [n for n in nodes if n == name or module_of(n) == name]
        if not hits:
            raise BadInputError(f"no node or module named {name!r} in the ONNX graph")
        found.extend(hits)
    return found


def module_of(node_name: str) -> Optional[str]:
    """The torch module a torchscript-exported node belongs to ("/a/a.0/conv1/Conv" -> "a.0.conv1")."""
    segments = node_name.strip("/").split("/")[:-1]
    if not segments:
        return None
    # a segment extending the previous one ("block" -> "block.0") is a Sequential index
    full, prev = segments[0], segments[0]
    for seg in segments[1:]:
        full += seg[len(prev):] if seg.startswith(prev + ".") else "." + seg
        prev = seg
    return full


def node_precisions(model: onnx.ModelProto) -> Dict[str, str]:
    """Precision of each weighted node (Conv, Gemm, MatMul): fp32, fp16, int8 or dynamic."""
    inits = {t.name: t.data_type for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    result: Dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in ("ConvInteger", "MatMulInteger"):
            result[node.name] = "dynamic"
        elif node.op_type in ("QLinearConv", "QLinearMatMul"):
            result[node.name] = "int8"
        elif node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            result[node.name] = _weight_precision(node.input[1], inits, producers)
    return result


def _weight_precision(tensor: str, inits: Dict[str, int], producers: Dict[str, onnx.NodeProto]) -> str:
    producer = producers.get(tensor)
    while producer is not None and producer.op_type in ("Transpose", "Reshape", "Identity"):
        tensor = producer.input[0]
        producer = producers.get(tensor)
    if producer is not None and producer.op_type == "DequantizeLinear":
        return "int8" if inits.get(producer.input[0]) in _INT_TYPES else "fp32"
    return "fp16" if inits.get(tensor) == onnx.TensorProto.FLOAT16 else "fp32"


def onnx_precision(path: Path) -> str:
    """The artifact's precision, read from its graph: fp32, fp16, int8, dynamic or mixed."""
    model = check_onnx(path)
    kinds = set(node_precisions(model).values())
    if kinds <= {"fp32"} and any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return "mixed"  # every weighted node in float, but int8 activations between other ops
    if not kinds:
        return "fp32"
    if len(kinds) == 1:
        return kinds.pop()
    return "mixed" if "int8" in kinds else sorted(kinds)[0]


def onnx_io(path: Path) -> Tuple[List[int], List[int]]:
    """Static input and output shapes of an ONNX file."""
    model = check_onnx(path)
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return dims(model.graph.input[0]), dims(model.graph.output[0])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter (warnings and prints) so stdout stays clean for --json."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization warns through the root logger
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)

