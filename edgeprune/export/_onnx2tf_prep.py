"""ONNX rewrites that make a PyTorch export convert correctly with onnx2tf.

onnx2tf expects a graph that onnx-simplifier has already cleaned (it runs `onnxsim` itself
when that is installed, and silently goes on without it). Without it, three things seen on
real CNN families went wrong, and each rewrite below keeps the ONNX outputs unchanged:

- Constant nodes: onnx2tf reads Slice axes from initializers only. A Slice whose axes come
  from a Constant node keeps its NCHW axis on the NHWC tensor: GhostNet's channel slice
  then cut the width and failed at the residual Add ("Dimensions must be equal").
- 0-d float constants: onnx2tf's accuracy check of Div/Mul takes a 0-d constant for a
  layer output and fails ("Output tensors of a Functional model must be the output of a
  TensorFlow Layer. Found: 1.414..."), and its exact-GELU detection (Div, Erf, Add, Mul,
  Mul -> TFLite GELU) wants one-element constants. Without that detection TFLite has no
  kernel for `tf.Erf`.
- MaxPool padding: see `edge_padded_maxpools`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Set

import numpy as np
import onnx
from onnx import numpy_helper

from edgeprune.export.onnx import edge_padded_maxpools

# elementwise ops for which a [1] operand broadcasts exactly as a 0-d one
_BROADCAST_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"}


def prepare_for_onnx2tf(onnx_path: Path, out_dir: Path) -> Path:
    """The ONNX file rewritten for onnx2tf (written into `out_dir`); outputs are unchanged."""
    model = onnx.load(str(onnx_path))
    constants_to_initializers(model)
    scalars_to_vectors(model)
    if any(n.op_type == "MaxPool" for n in model.graph.node):
        model = edge_padded_maxpools(model)
    path = out_dir / "for_onnx2tf.onnx"
    onnx.save(model, str(path))
    return path


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Move the tensor of each `Constant(value=...)` node into a graph initializer."""
    kept: List[onnx.NodeProto] = []
    for node in model.graph.node:
        attrs = [a for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and len(node.attribute) == 1 and attrs:
            array = numpy_helper.to_array(attrs[0].t)
            model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def scalars_to_vectors(model: onnx.ModelProto) -> None:
    """Give 0-d float initializers shape [1] where only elementwise ops read them."""
    readers: Dict[str, Set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    outputs = {o.name for o in model.graph.output}
    for init in model.graph.initializer:
        ops = readers.get(init.name, set())
        if init.dims or not ops or not ops <= _BROADCAST_OPS or init.name in outputs:
            continue
        array = numpy_helper.to_array(init)
        if np.issubdtype(array.dtype, np.floating):
            init.CopyFrom(numpy_helper.from_array(array.reshape(1), init.name))
