"""Bias correction for int8 weights (Nagel et al., Data-Free Quantization, 2019, section 4.2).

Rounding a conv's weights to int8 shifts the mean of each output channel by
(W_int8 - W) . E[x]: few weights per channel (depthwise, 9) and positive inputs (after ReLU)
make the shift systematic rather than noise, and a global pool or a squeeze-excite mean then
keeps the shift while averaging the noise away. Subtracting it from the float bias before
quantizing cancels it; E[x] per input channel comes from the float model on calibration data.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import onnx
from onnx import numpy_helper

_CORRECTED = ("Conv", "Gemm")


def bias_corrected(model: onnx.ModelProto, calibration: np.ndarray, skip: List[str],
                   per_channel: bool = True) -> onnx.ModelProto:
    """A copy of the fp32 `model` whose Conv/Gemm biases cancel the mean shift of int8 weights
    (symmetric, per output channel as onnxruntime rounds them); nodes in `skip` stay float."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in _CORRECTED and n.name not in skip
             and len(n.input) > 2 and n.input[1] in inits and n.input[2] in inits]
    means = _input_means(model, [n.input[0] for n in nodes], calibration)
    for node in nodes:
        weight = _as_out_in(node, numpy_helper.to_array(inits[node.input[1]]))
        shift = _mean_shift(node, weight, means[node.input[0]], per_channel)
        bias = numpy_helper.to_array(inits[node.input[2]])
        inits[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(bias.dtype), node.input[2]))
    return model


def _as_out_in(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """Conv weights as they are ([out, in/groups, k, k]); Gemm weights as [out, in]."""
    if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
        return weight.T
    return weight


def _mean_shift(node: onnx.NodeProto, weight: np.ndarray, mean_in: np.ndarray, per_channel: bool) -> np.ndarray:
    """(W_int8 - W) . E[x] for each output channel (padding's zeros ignored)."""
    flat = weight.reshape(weight.shape[0], -1)
    scale = np.abs(flat).max(axis=1, keepdims=True) if per_channel else np.abs(flat).max(keepdims=True)
    scale = np.where(scale > 0, scale / 127.0, 1.0)
    error = (np.clip(np.round(flat / scale), -127, 127) * scale - flat).reshape(weight.shape)
    if node.op_type == "Gemm":
        return error @ mean_in
    per_in = error.reshape(*error.shape[:2], -1).sum(axis=2)  # [out, in/groups]
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    outs_per_group, ins_per_group = weight.shape[0] // groups, weight.shape[1]
    group_of = np.arange(weight.shape[0]) // outs_per_group
    inputs = mean_in.reshape(groups, ins_per_group)[group_of]  # [out, in/groups]
    return (per_in * inputs).sum(axis=1)


def _input_means(model: onnx.ModelProto, tensors: List[str], x: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-channel (axis 1) means of `tensors` over the calibration samples, in float."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    graph_inputs = {i.name for i in probe.graph.input}
    outputs = {o.name for o in probe.graph.output}
    wanted = [t for t in dict.fromkeys(tensors) if t not in graph_inputs]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in wanted if t not in outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    batch = batch if isinstance(batch, int) and batch > 0 else len(x)
    sums: Dict[str, np.ndarray] = {}
    count = 0
    for start in range(0, len(x) - len(x) % batch, batch):  # whole static batches only
        piece = x[start:start + batch]
        values = dict(zip(names, session.run(None, {input_name: piece})))
        values.update({i: piece for i in graph_inputs})
        for t in dict.fromkeys(tensors):
            v = values[t].reshape(len(piece), values[t].shape[1], -1)  # [N, C, positions]
            sums[t] = sums.get(t, 0) + v.mean(axis=2).sum(axis=0)
        count += len(piece)
    return {t: s / count for t, s in sums.items()}
