"""Which layers int8 keeps in float by itself, and which layers an artifact runs in float.

Kept in float when `ExportConfig.float_sensitive` is on (the default): the first and the last
weighted layer (the image's and the logits' full range on one int8 scale), hardswish
activations, and squeeze-excite gates (a sigmoid or hardsigmoid whose output multiplies a
feature map) with the multiply they drive: a gate's few distinct int8 levels scale whole
channels. SiLU (x * sigmoid(x)) is an activation, not a gate, and stays int8.

`float_layers(artifact)` reads what really runs in float from the file, never from the
config: ONNX node names, or TFLite "OP tensor-name" strings. In a QDQ graph a node counts as
float unless it sits in DequantizeLinear -> node -> QuantizeLinear: a hardswish between two
int8 convs still reads and writes int8 tensors there, so ONNX lists fewer hardswish than TFLite.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import onnx

from edgeprune.errors import BadInputError
from edgeprune.export._litert import require_quiet

GATE_OPS = ("Sigmoid", "HardSigmoid")
ACTIVATION_OPS = ("HardSwish",)
_WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_REPORTED = (*GATE_OPS, *ACTIVATION_OPS, "Mul")
_TFLITE_GATES = ("LOGISTIC", "RELU_0_TO_1")  # sigmoid; onnx2tf's hardsigmoid is MUL/ADD into RELU_0_TO_1
_TFLITE_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
_TFLITE_PLUMBING = ("QUANTIZE", "DEQUANTIZE")


def sensitive_onnx_nodes(model: onnx.ModelProto) -> List[str]:
    """ONNX node names int8 should keep in float, in graph order (see the module docstring)."""
    nodes = list(model.graph.node)
    weighted = [n for n in nodes if n.op_type in _WEIGHTED and len(n.input) > 1]
    picked = {weighted[0].name, weighted[-1].name} if weighted else set()
    readers = _readers(nodes)
    for node in nodes:
        if node.op_type in ACTIVATION_OPS:
            picked.add(node.name)
        elif node.op_type in GATE_OPS:
            muls = [m for m in readers.get(node.output[0], []) if _gates(m, node)]
            if muls:
                picked.update([node.name, *(m.name for m in muls)])
    return [n.name for n in nodes if n.name in picked]


def _readers(nodes: Sequence) -> Dict[str, List]:
    readers: Dict[str, List] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _gates(mul, gate) -> bool:
    """`mul` scales another tensor by `gate`'s output (SE), not the gate's own input (SiLU)."""
    if mul.op_type != "Mul" or len(mul.input) != 2:
        return False
    gate_out, gate_in = gate.output[0], gate.input[0]
    other = mul.input[1] if mul.input[0] == gate_out else mul.input[0]
    return other != gate_in


def onnx_float_layers(model: onnx.ModelProto) -> List[str]:
    """Nodes of a QDQ int8 graph that run in float: weighted nodes with float weights, and
    gates, hardswish and multiplies not wrapped in DequantizeLinear -> op -> QuantizeLinear.
    [] for a graph without int8."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    if "DequantizeLinear" not in producers.values():
        return []
    from edgeprune.export.onnx import node_precisions

    weighted = node_precisions(model)
    readers = _readers(model.graph.node)
    found = []
    for node in model.graph.node:
        if node.name in weighted:
            if weighted[node.name] == "fp32":
                found.append(node.name)
        elif node.op_type in _REPORTED and not _wrapped(node, producers, readers):
            found.append(node.name)
    return found


def _wrapped(node, producers: Dict[str, str], readers: Dict[str, List]) -> bool:
    """Every activation input comes from a DequantizeLinear and every reader is a QuantizeLinear."""
    inputs = [i for i in node.input if producers.get(i, "Constant") != "Constant"]
    outputs = [r for o in node.output for r in readers.get(o, [])]
    return (all(producers[i] == "DequantizeLinear" for i in inputs)
            and bool(outputs) and all(r.op_type == "QuantizeLinear" for r in outputs))


def sensitive_tflite_ops(fp32_tflite: bytes) -> List[str]:
    """Output tensor names of the ops of a float TFLite model that int8 should keep in float."""
    ops, names = _tflite_graph(fp32_tflite)
    weighted = [op for op in ops if op["op_name"] in _TFLITE_WEIGHTED]
    picked = [weighted[0], weighted[-1]] if weighted else []
    readers: Dict[int, List[dict]] = {}
    for op in ops:
        for i in op["inputs"]:
            readers.setdefault(int(i), []).append(op)
    for op in ops:
        if op["op_name"] == "HARD_SWISH":
            picked.append(op)
        elif op["op_name"] in _TFLITE_GATES:
            muls = [m for m in readers.get(int(op["outputs"][0]), []) if _tflite_gates(m, op)]
            picked.extend([op, *muls] if muls else [])
    chosen = {int(op["outputs"][0]) for op in picked}
    return [names[int(op["outputs"][0])] for op in ops if int(op["outputs"][0]) in chosen]


def _tflite_gates(mul: dict, gate: dict) -> bool:
    if mul["op_name"] != "MUL" or len(mul["inputs"]) != 2:
        return False
    out, inp = int(gate["outputs"][0]), int(gate["inputs"][0])
    a, b = (int(i) for i in mul["inputs"])
    return (b if a == out else a) != inp


def tflite_float_layers(path: Path) -> List[str]:
    """"OP tensor-name" of each op that computes in float in a TFLite model with int8 ops
    (QUANTIZE/DEQUANTIZE excepted); [] for a model without int8 ops."""
    ops, names, dtypes = _tflite_graph(Path(path).read_bytes(), with_types=True)
    if not any(dtypes[int(op["outputs"][0])] == "int8" for op in ops):
        return []
    return [f"{op['op_name']} {names[int(op['outputs'][0])].split(';')[0]}" for op in ops
            if op["op_name"] not in _TFLITE_PLUMBING and dtypes[int(op["outputs"][0])] == "float32"]


def _tflite_graph(tflite: bytes, with_types: bool = False):
    """(ops in execution order, tensor index -> name[, -> dtype name]) of a TFLite model."""
    interp_mod = require_quiet("ai_edge_litert.interpreter")
    try:
        interp = interp_mod.Interpreter(model_content=tflite)
    except Exception as exc:
        raise BadInputError(f"not a valid TFLite model: {str(exc).splitlines()[0][:200]}") from None
    details = interp.get_tensor_details()
    names = {t["index"]: t["name"] for t in details}
    ops = [op for op in interp._get_ops_details() if len(op["outputs"])]
    if with_types:
        return ops, names, {t["index"]: getattr(t["dtype"], "__name__", str(t["dtype"])) for t in details}
    return ops, names


def float_layers(artifact: str | Path) -> List[str]:
    """The layers of an int8 artifact (.onnx or .tflite) that run in float, read from the file."""
    path = Path(artifact)
    if not path.is_file():
        raise BadInputError(f"no such artifact: {path}")
    if path.suffix.lower() == ".onnx":
        from edgeprune.export.onnx import check_onnx

        return onnx_float_layers(check_onnx(path))
    if path.suffix.lower() == ".tflite":
        return tflite_float_layers(path)
    raise BadInputError(f"unknown artifact type {path.suffix!r}: expected .onnx or .tflite")


def without(names: Iterable[str], dropped: Iterable[str]) -> List[str]:
    """`names` in order, less `dropped`, without repeats."""
    drop = set(dropped)
    return [n for n in dict.fromkeys(names) if n not in drop]
