"""PyTorch -> ONNX -> TensorFlow/Keras model (onnx2tf, in memory) -> TFLite, in fp32, fp16, dynamic and int8.

onnx2tf only builds the NHWC Keras model; every .tflite is made here by TFLiteConverter, so
int8 calibration uses the user's data set (the representative dataset) and nothing is ever
downloaded: onnx2tf's sample-image download is replaced by the same data for the whole call.

int8 is calibrated by the converter, its activation ranges chosen (min/max or percentiles,
see _tflite_calibration) and then quantized: int8 kernels and, for a full-integer model,
int8 input and output tensors (the runner and the verifier (de)quantize with each tensor's
scale and zero point); `int8_io=False` keeps float32 input/output. Mixed precision (ops kept
in float, by name) has float32 input/output.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np
import onnx

from edgeprune.errors import BadInputError
from edgeprune.export._common import first_line
from edgeprune.export._litert import quiet_native, require_quiet
from edgeprune.export.onnx import node_precisions, resolve_nodes

WEIGHTED_TFLITE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def onnx_to_keras(onnx_path: Path, work: Path, samples_nhwc: np.ndarray) -> Any:
    """Convert an fp32 ONNX file to an NHWC Keras model with onnx2tf, offline, in memory.

    The model is not written as a SavedModel: serializing onnx2tf's layers takes minutes on a
    large net, while converting the in-memory model to TFLite takes seconds.
    """
    from edgeprune.export._onnx2tf_prep import prepare_for_onnx2tf

    tf = require_quiet("tensorflow")
    onnx2tf = require_quiet("onnx2tf")
    module = require_quiet("onnx2tf.onnx2tf")
    onnx_path = prepare_for_onnx2tf(onnx_path, work)
    patched = lambda: samples_nhwc.astype(np.float32)  # noqa: E731  (no network, our data)
    original = module.download_test_image_data
    module.download_test_image_data = patched
    log = io.StringIO()
    try:
        with _quiet(tf) as log:
            # a lone Erf (exact GELU is matched to TFLite's GELU first) has no TFLite kernel:
            # onnx2tf's polynomial erf (error < 2e-7) is made of builtin ops
            model = onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(work / "tf"),
                                    disable_model_save=True, non_verbose=True, verbosity="error",
                                    replace_to_pseudo_operators=["erf"])
    except (SystemExit, Exception) as exc:  # onnx2tf exits the interpreter on some errors
        raise BadInputError(onnx2tf_error(exc, log.getvalue())) from None
    finally:
        module.download_test_image_data = original
    if model is None:
        raise BadInputError("onnx2tf produced no model (unsupported op?)")
    return model


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOISE = ("Call arguments received", "Read this and deal with it", "Alternatively, if the input OP",
          "If the input OP of ONNX", "Also, for models that", "input_onnx_file_path:", "The trace log",
          "onnx_op_name:")


def onnx2tf_error(exc: BaseException, log: str) -> str:
    """One line saying where onnx2tf failed (the ONNX node it names) and the real cause.

    onnx2tf wraps TensorFlow's reason in several lines ("Exception encountered when calling
    layer ..." first, "Dimensions must be equal ..." after): the reason is kept, the rest cut.
    """
    log = _ANSI.sub("", log)
    node = re.search(r"onnx_op_name:\s*(\S+)", log)
    where = f" at ONNX node {node.group(1)}" if node else ""
    if isinstance(exc, SystemExit):
        errors = [line.split("ERROR:", 1)[1] for line in log.splitlines() if "ERROR:" in line]
        cause = _cause(errors) or f"exit {exc.code}"
    else:
        cause = f"{type(exc).__name__}: {_cause(str(exc).splitlines()) or ''}"
    return f"onnx2tf cannot convert the model{where}: {cause}"[:600]


def _cause(lines: List[str]) -> str:
    """The first line and the first one after it that says why, without onnx2tf's advice."""
    kept = [line.strip().rstrip(".") for line in lines
            if line.strip() and not any(line.strip().startswith(n) for n in _NOISE)]
    if not kept:
        return ""
    why = next((line for line in kept[1:] if not line.startswith(("File ", "Traceback", "•"))), "")
    return f"{kept[0]}: {why}" if why and kept[0].startswith("Exception encountered") else kept[0]


def keras_to_tflite(model: Any, precision: str, samples_nhwc: Optional[np.ndarray] = None,
                    per_channel: bool = True, int8_io: bool = True, keep_float: Iterable[str] = (),
                    calibration: str = "minmax") -> bytes:
    """TFLite flatbuffer bytes of onnx2tf's Keras model at fp32, fp16, dynamic or int8.

    int8 ranges follow `calibration` (minmax, percentile[:P] or auto, see _tflite_calibration);
    ops in `keep_float` (output tensor names) stay float, and the model then has float io.
    """
    tf = require_quiet("tensorflow")
    converter = _converter(tf, model)
    converter._experimental_disable_per_channel = not per_channel
    if precision == "int8":
        if samples_nhwc is None:
            raise BadInputError("int8 needs calibration data")
        return _int8(tf, converter, samples_nhwc, per_channel, int8_io, list(keep_float), calibration)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        with _quiet(tf):
            return converter.convert()
    except Exception as exc:
        raise BadInputError(f"TFLite conversion failed ({precision}): {converter_error(exc)}") from None


def _int8(tf, converter, samples_nhwc: np.ndarray, per_channel: bool, int8_io: bool, keep_float: List[str],
          calibration: str) -> bytes:
    """Calibrate, choose the activation ranges, quantize (see _tflite_calibration)."""
    from edgeprune.export import _tflite_calibration as ranges

    try:
        with _quiet(tf):
            calibrated = ranges.calibrated(tf, converter, samples_nhwc, per_channel)
            return ranges.best_int8(tf, calibrated, samples_nhwc, calibration, per_channel, int8_io, keep_float)[0]
    except Exception as exc:
        raise BadInputError(f"TFLite conversion failed (int8): {converter_error(exc)}") from None


def converter_error(exc: BaseException) -> str:
    """The converter's own `error:` lines (after a long file path) in one line, with a way out."""
    text = str(exc)
    errors = list(dict.fromkeys(m.strip() for m in re.findall(r"error: ([^\n]+)", text)))
    cause = "; ".join(errors) if errors else first_line(exc)
    if "neither a custom op nor a flex op" in text:
        cause += (" (no TFLite kernel for this op: replace it in the model, e.g. exact GELU by "
                  "nn.GELU(approximate='tanh'), or export to ONNX)")
    return cause[:600]


def _converter(tf, model: Any):
    """A TFLiteConverter over the model's concrete function (as onnx2tf builds it)."""
    run = tf.function(lambda *inputs: model(inputs),
                      input_signature=[tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs])
    with _quiet(tf):
        concrete = run.get_concrete_function()
    # without the model as trackable_obj, TF freezes the function instead of re-saving the model
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete])


def tflite_nodes_for(onnx_model: onnx.ModelProto, fp32_tflite: bytes, names: Iterable[str]) -> List[str]:
    """TFLite op output names of ONNX nodes / torch modules, matched by their weights."""
    wanted = resolve_nodes(onnx_model, names)
    if not wanted:
        return []
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    by_node = {n.name: n for n in onnx_model.graph.node}
    ops = weighted_ops(fp32_tflite)
    found = []
    for node_name in wanted:
        node = by_node[node_name]
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            continue  # not a weighted op; nothing to keep in float
        match = [name for name, w in ops if _same_values(w, weight)]
        if not match:
            raise BadInputError(f"cannot find {node_name!r} in the TFLite graph")
        found.append(match[0])
    return found


def weighted_ops(tflite: bytes) -> List[tuple]:
    """(output tensor name, weight array) of each conv / fully-connected op in a float model."""
    interp = require_quiet("ai_edge_litert.interpreter").Interpreter(model_content=tflite)
    details = {t["index"]: t for t in interp.get_tensor_details()}
    result = []
    for op in interp._get_ops_details():
        if op["op_name"] in WEIGHTED_TFLITE_OPS:
            weight = interp.get_tensor(int(op["inputs"][1]))
            result.append((details[int(op["outputs"][0])]["name"], weight))
    return result


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    if a.size != b.size:
        return False
    return bool(np.allclose(np.sort(a.ravel()), np.sort(b.ravel().astype(a.dtype)), atol=1e-5))


def tflite_node_precisions(path: Path) -> Dict[str, str]:
    """Precision of each conv / fully-connected op, read from its tensor types."""
    return _weighted_precisions(_interpreter(path))


def _weighted_precisions(interp) -> Dict[str, str]:
    details = {t["index"]: t for t in interp.get_tensor_details()}
    producers = {int(o): op for op in interp._get_ops_details() for o in op["outputs"]}
    result = {}
    for op in interp._get_ops_details():
        if op["op_name"] not in WEIGHTED_TFLITE_OPS:
            continue
        act, weight = (details[int(i)] for i in op["inputs"][:2])
        name = details[int(op["outputs"][0])]["name"]
        result[name] = _op_precision(act, weight, producers, details)
    return result


def _op_precision(act: dict, weight: dict, producers: dict, details: dict) -> str:
    if weight["dtype"] == np.int8:
        return "int8" if np.issubdtype(act["dtype"], np.integer) else "dynamic"
    source = producers.get(weight["index"])
    if source is not None and source["op_name"] == "DEQUANTIZE":
        return "fp16" if details[int(source["inputs"][0])]["dtype"] == np.float16 else "int8"
    return "fp32"


def tflite_precision(path: Path) -> str:
    """The artifact's precision from its tensors: fp32, fp16, dynamic, int8 or mixed."""
    interp = _interpreter(path)
    kinds = set(_weighted_precisions(interp).values())
    if kinds <= {"fp32"} and _int8_activations(interp):
        return "mixed"  # every weighted op in float, but int8 tensors between other ops
    if len(kinds) <= 1:
        return kinds.pop() if kinds else "fp32"
    return "mixed" if "int8" in kinds else sorted(kinds)[0]


def _int8_activations(interp) -> bool:
    """Whether any op writes an int8 tensor (weights are inputs, never op outputs)."""
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    return any(dtypes.get(int(o)) == np.int8 for op in interp._get_ops_details() for o in op["outputs"])


def _interpreter(path: Path):
    interpreter_mod = require_quiet("ai_edge_litert.interpreter")
    try:
        return interpreter_mod.Interpreter(model_path=str(path))
    except Exception as exc:
        raise BadInputError(f"{Path(path).name} is not a valid TFLite model: {first_line(exc)}") from None


@contextlib.contextmanager
def _quiet(tf) -> Iterator[io.StringIO]:
    """Keep onnx2tf / TF chatter (Python warnings, logs and native output) off the terminal."""
    tf.get_logger().setLevel(logging.ERROR)
    with quiet_native() as printed, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield printed


def nhwc(x_nchw: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC, contiguous."""
    return np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))

