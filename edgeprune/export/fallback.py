"""Measured float fallback for int8: layers move to float until the artifact agrees with float.

The rules in `sensitive` keep the layers int8 is known to hurt in float. A model of a family
nobody listed can still lose more than that (LayerNorm nets, cheap ghost branches, wide
depthwise stages). So after quantizing, the exporter measures the int8 artifact's top-1
agreement with the float model on held-out check samples; below
`ExportConfig.min_agreement` it floats the costliest layers, a few at a time, re-quantizing
and re-measuring at each rung, and stops at the first rung that agrees (or keeps the one that
agreed best). Within MAX_FLOAT_SHARE of the costly layers, unless the best rung there would
fail verification: then it floats on until the artifact passes with a margin (`ladder`'s floor).

The cost of a layer is read from the int8 QDQ graph and the float graph run side by side on a
few calibration samples, every intermediate tensor saved (onnxruntime.quantization's
qdq_loss_debug augments the graphs): a node's cost is how many dB of SQNR against float its
output has lost over its worst input, its own weight and output rounding. TFLite takes the same
ranking, its weighted layers matched to the TFLite ops by their weights.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

import numpy as np
import onnx

RANK_SAMPLES = 32
RUNGS = (1, 2, 4, 8, 16, 32)  # how many of the costliest layers (with their readers) each rung floats
# a rung may float at most this share of the nodes int8 costs anything: past it the artifact is
# a float model in all but name (a conformance Inception went to 36 of 36 convs floated)
MAX_FLOAT_SHARE = 0.75
MIN_COST_DB = 0.1  # below this a node's rounding is noise next to its inputs'
FLOAT_SQNR_DB = 60.0  # a tensor no int8 op touched yet: its SQNR counts as this, not as infinite
# Ops that only move or reshape data: floating one only moves the rounding to its reader
_PLUMBING = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Gather", "Slice",
             "Split", "Expand", "Tile", "Pad", "Shape", "Cast")
_TFLITE_PLUMBING = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "GATHER", "SLICE", "STRIDED_SLICE",
                    "SPLIT", "PAD", "SHAPE", "CAST", "QUANTIZE", "DEQUANTIZE")

Score = Tuple[float, float]  # (top-1 agreement, SQNR dB) on the calibration samples
T = TypeVar("T")


def costly_nodes(fp32: Path, qdq: Path, samples: np.ndarray) -> List[Tuple[List[str], float]]:
    """(node names, dB lost) of the nodes whose int8 rounding costs the most, costliest first;
    each node comes with its readers (see _ranked)."""
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors
    from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX

    with tempfile.TemporaryDirectory(prefix="edgeprune-fallback-") as tmp:
        paths = [Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"]
        for src, dst in zip((fp32, qdq), paths):
            modify_model_output_intermediate_tensors(str(src), str(dst))
        float_run, qdq_run = (_all_tensors(p) for p in paths)
        signal: Dict[str, float] = {}
        noise: Dict[str, float] = {}
        for x in samples[:RANK_SAMPLES]:
            ref, got = float_run(x[None]), qdq_run(x[None])
            for name, value in ref.items():
                other = got.get(name + DEQUANT_OUTPUT_SUFFIX, got.get(name))
                if other is None or other.shape != value.shape:
                    continue
                signal[name] = signal.get(name, 0.0) + float(np.sum(value.astype(np.float64) ** 2))
                noise[name] = noise.get(name, 0.0) + float(np.sum((value - other).astype(np.float64) ** 2))
    nodes = [_Node(n.name, n.op_type in _PLUMBING, list(n.input), list(n.output), _onnx_layer(n.name))
             for n in onnx.load(str(fp32)).graph.node]
    return _ranked(nodes, _sqnr(signal, noise))


def costly_tflite_ops(float_model: bytes, int8_model: bytes,
                      samples_nhwc: np.ndarray) -> List[Tuple[List[str], float]]:
    """costly_nodes for TFLite: (op output tensor names, dB lost), costliest first, from the float
    and the int8 interpreters run side by side with every tensor preserved (tensor names match:
    the quantizer keeps them)."""
    from edgeprune.export._litert import dequantize_tensor, quantize_tensor, quiet_native, require_quiet

    litert = require_quiet("ai_edge_litert.interpreter")
    plain = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES  # a delegate's fused ops keep no tensors
    with quiet_native():
        runs = [litert.Interpreter(model_content=m, experimental_preserve_all_tensors=True,
                                   experimental_op_resolver_type=plain) for m in (float_model, int8_model)]
        for r in runs:
            r.allocate_tensors()
    float_run, int8_run = runs
    ops = float_run._get_ops_details()
    details = {d["index"]: d for d in float_run.get_tensor_details()}
    activations = {int(i) for op in ops for i in op["outputs"]} | {float_run.get_input_details()[0]["index"]}
    by_name = {d["name"]: d for d in int8_run.get_tensor_details()}
    pairs = {i: by_name[details[i]["name"]] for i in activations if details[i]["name"] in by_name}
    signal: Dict[int, float] = {}
    noise: Dict[int, float] = {}
    for x in samples_nhwc[:RANK_SAMPLES]:
        for r in runs:
            inp = r.get_input_details()[0]
            r.set_tensor(inp["index"], quantize_tensor(x[None], inp))
            r.invoke()
        for i, other in pairs.items():
            ref = float_run.get_tensor(i).astype(np.float64)
            got = dequantize_tensor(int8_run.get_tensor(other["index"]), other).astype(np.float64)
            if got.shape != ref.shape:
                continue
            signal[i] = signal.get(i, 0.0) + float(np.sum(ref ** 2))
            noise[i] = noise.get(i, 0.0) + float(np.sum((ref - got) ** 2))
    names = [details[int(op["outputs"][0])]["name"] for op in ops]
    nodes = [_Node(name, op["op_name"] in _TFLITE_PLUMBING, [int(i) for i in op["inputs"]],
                   [int(i) for i in op["outputs"]], _tflite_layer(name)) for name, op in zip(names, ops)]
    return _ranked(nodes, _sqnr(signal, noise))


class _Node(NamedTuple):
    name: str
    plumbing: bool
    inputs: List[Any]
    outputs: List[Any]
    layer: str  # the source layer the converter made this node from ("" if it cannot tell)


def _onnx_layer(name: str) -> str:
    """"/stages/stages.1/norm/ReduceMean" -> "/stages/stages.1/norm" (the torch module)."""
    return name.rsplit("/", 1)[0] if name.count("/") > 1 else ""


def _tflite_layer(name: str) -> str:
    """"model_58/layer_normalization_2/moments/mean;..." -> "layer_normalization_2" (the Keras layer)."""
    parts = name.split(";")[0].split("/")
    return parts[1] if len(parts) > 2 else ""


def _ranked(nodes: List[_Node], sqnr: Dict[Any, float]) -> List[Tuple[List[str], float]]:
    """(names, dB lost) per costly node, costliest first. A node goes to float with the nodes
    that write its inputs and read its output (through plumbing): the rounding sits on a
    tensor, and a quantizer rounds a tensor wherever an int8 node writes or reads it (a fused
    conv + ReLU rounds after the ReLU). Each of them brings the rest of its source layer: a
    LayerNorm the converter split into ten ops loses its precision on every tensor between
    them, so it goes to float whole or not at all."""
    readers: Dict[Any, List[_Node]] = {}
    writer: Dict[Any, _Node] = {}
    for node in nodes:
        for t in node.inputs:
            readers.setdefault(t, []).append(node)
        for t in node.outputs:
            writer[t] = node

    def downstream(node: _Node) -> List[str]:
        names = [node.name]
        for r in (r for t in node.outputs for r in readers.get(t, [])):
            names.extend(downstream(r) if r.plumbing else [r.name])
        return names

    def upstream(node: _Node) -> List[str]:
        names = [node.name]
        for w in (writer[t] for t in node.inputs if t in writer):
            names.extend(upstream(w) if w.plumbing else [w.name])
        return names

    known = dict(sqnr)
    for node in nodes:  # a tensor the quantized graph fused away carries its writer's input SQNR
        ins = [known[t] for t in node.inputs if t in known]
        for t in node.outputs:
            if t not in known and ins:
                known[t] = min(ins)
    layers: Dict[str, List[str]] = {}
    for node in nodes:
        if node.layer:
            layers.setdefault(node.layer, []).append(node.name)
    layer_of = {node.name: node.layer for node in nodes}
    costs = []
    for node in nodes:
        cost = _cost([known[t] for t in node.inputs if t in known], [sqnr[t] for t in node.outputs if t in sqnr])
        if not node.plumbing and cost is not None:
            group = [*upstream(node), *downstream(node)]
            whole = [m for name in group for m in layers.get(layer_of[name], [name])]
            costs.append((list(dict.fromkeys([*group, *whole])), cost))
    return sorted(costs, key=lambda c: -c[1])


def _sqnr(signal: Dict, noise: Dict) -> Dict:
    """dB of signal over int8 noise per tensor, at most FLOAT_SQNR_DB."""
    return {t: min(FLOAT_SQNR_DB, 10 * np.log10(max(signal[t], 1e-30) / max(noise[t], 1e-30))) for t in signal}


def _cost(inputs: List[float], outputs: List[float]) -> Optional[float]:
    """dB a node lost over its worst input; None when it cannot be told or is below MIN_COST_DB."""
    if not inputs or not outputs or min(inputs) - min(outputs) < MIN_COST_DB:
        return None
    return float(min(inputs) - min(outputs))


def _all_tensors(path: Path) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
    """A function from one input batch to {tensor name: value} of every saved tensor."""
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import _TENSOR_SAVE_POSTFIX

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name.endswith(_TENSOR_SAVE_POSTFIX)]
    feed = session.get_inputs()[0].name

    def run(x: np.ndarray) -> Dict[str, np.ndarray]:
        values = session.run(names, {feed: x.astype(np.float32)})
        return {n[:-len(_TENSOR_SAVE_POSTFIX)]: v for n, v in zip(names, values)}
    return run


def ladder(first: T, score: Score, min_agreement: float, candidates: Callable[[], Sequence[List[str]]],
           build: Callable[[List[str]], Tuple[T, Score]], floor: float = 0.0) -> Tuple[T, Score, List[str]]:
    """(artifact, its score, layers floated): `first` when it agrees, else the first rung of the
    costliest `candidates` (groups of layers) that does, else the best rung measured. No rung
    floats more than MAX_FLOAT_SHARE of the candidates' nodes (the artifact stays int8 at
    heart) unless the best rung within that share is below `floor`, the agreement an artifact
    needs to pass verification: then the ladder goes on past the share, up to every group,
    and stops at the first rung that reaches `floor`. An int8 file that fails verification
    ships nothing; one that runs more layers in float than asked says so in its float_layers."""
    if min_agreement <= 0 or score[0] >= min_agreement:
        return first, score, []
    groups = [g for g in candidates() if g]
    limit = MAX_FLOAT_SHARE * len({name for group in groups for name in group})
    best: Tuple[T, Score, List[str]] = (first, score, [])
    tried: List[List[str]] = []
    for count in sorted({min(c, len(groups)) for c in (*RUNGS, len(groups))} - {0}):
        floated = list(dict.fromkeys(name for group in groups[:count] for name in group))
        if floated in tried:  # the next groups were inside the first ones
            continue
        past_share = bool(tried) and len(floated) > limit  # the first rung always runs
        if past_share and best[1][0] >= floor:
            break
        tried.append(floated)
        artifact, measured = build(floated)
        if measured > best[1]:
            best = (artifact, measured, floated)
        if measured[0] >= (min(floor, min_agreement) if past_share else min_agreement):
            break
    return best
