"""TensorFlow / LiteRT plumbing shared by the TFLite converter, its calibration and the runner.

Quiet imports and quiet native output (stdout must stay clean for --json), int8 tensors
(de)quantized with a tensor's own scale and zero point, and the converter's representative
dataset. A leaf: it imports nothing from edgeprune.export, and TensorFlow only when asked.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List

import numpy as np

from edgeprune._optional import require


def require_quiet(module: str) -> ModuleType:
    """Import a TensorFlow / LiteRT module with its start-up log lines kept off the terminal.

    Set at first use, never at `import edgeprune`; a TF_CPP_MIN_LOG_LEVEL the user chose is kept.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_native():
        mod = require(module)
    if module == "tensorflow":
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
        mod.get_logger().setLevel(logging.ERROR)
    return mod


@contextlib.contextmanager
def quiet_native() -> Iterator[io.StringIO]:
    """Send what native code writes to file descriptors 1 and 2 to /dev/null for the block.

    TensorFlow's absl logging prints start-up and converter lines to stderr whatever
    TF_CPP_MIN_LOG_LEVEL says, and LiteRT announces its delegate there; stdout must stay clean
    for --json. Errors still reach the caller as Python exceptions; what Python code printed
    is kept in the buffer yielded (onnx2tf prints the failing node's name there).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    devnull = os.open(os.devnull, os.O_WRONLY)
    buffer = io.StringIO()
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def quantize_tensor(x: np.ndarray, detail: Dict[str, Any]) -> np.ndarray:
    """Float values as the interpreter tensor `detail` wants them (int8 with its scale and zero point)."""
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize_tensor(y: np.ndarray, detail: Dict[str, Any]) -> np.ndarray:
    """The float32 values of an interpreter tensor read with `detail`."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def representative_dataset(samples_nhwc: np.ndarray) -> Callable[[], Iterator[List[np.ndarray]]]:
    """TFLiteConverter's representative_dataset: one float32 sample per step."""
    def gen() -> Iterator[List[np.ndarray]]:
        for sample in samples_nhwc:
            yield [sample[None].astype(np.float32)]

    return gen
