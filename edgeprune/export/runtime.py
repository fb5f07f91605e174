"""Host runners for artifacts: onnxruntime for .onnx, the LiteRT Interpreter for .tflite.

Callers pass NCHW float32 batches, as PyTorch does. A runner reads the artifact's input
shape: when the artifact wants NHWC it transposes; when its batch is static it splits the
batch (padding the last piece); when its input or output is int8 it (de)quantizes with the
tensor's own scale and zero point. Anything else is a wrong-input-shape BadInputError.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Tuple

import numpy as np

from edgeprune.errors import BadInputError
from edgeprune.export._litert import dequantize_tensor, quantize_tensor, quiet_native, require_quiet

LAYOUTS = ("NCHW", "NHWC")


class Runner:
    """One loaded artifact; `run(x_nchw)` returns float32 outputs, one row per sample."""

    runtime: str = ""
    input_shape: Tuple[int, ...] = ()
    layout_preference: Tuple[str, ...] = LAYOUTS

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run NCHW float32 samples through the artifact, in pieces of its static batch."""
        native = self.to_native(x)
        batch = self.input_shape[0] or len(native)
        outs = []
        for start in range(0, len(native), batch):
            piece = native[start:start + batch]
            n = len(piece)
            if n < batch:
                piece = np.concatenate([piece, np.zeros((batch - n, *piece.shape[1:]), piece.dtype)])
            outs.append(self.invoke(piece)[:n])
        return np.concatenate(outs).astype(np.float32)

    def to_native(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 -> the layout the artifact wants (per sample dims compared)."""
        x = np.asarray(x, dtype=np.float32)
        want = tuple(self.input_shape[1:])
        if x.ndim != 4:
            raise BadInputError(f"expected an NCHW batch, got shape {list(x.shape)}")
        for layout in self.layout_preference:
            perm = (0, 2, 3, 1) if layout == "NHWC" else (0, 1, 2, 3)
            if tuple(x.shape[i] for i in perm[1:]) == want:
                return np.ascontiguousarray(x.transpose(perm))
        raise BadInputError(
            f"input of shape {list(x.shape)} (NCHW) does not fit the artifact's input "
            f"{list(self.input_shape)} in NCHW or NHWC"
        )

    def invoke(self, native: np.ndarray) -> np.ndarray:
        """Run one batch already in the artifact's layout and batch size."""
        raise NotImplementedError

    def time_runs(self, x: np.ndarray, runs: int = 50, warmup: int = 5) -> List[float]:
        """Seconds per invoke of one native batch, after `warmup` untimed runs."""
        native = self.to_native(x)[: self.input_shape[0] or len(x)]
        for _ in range(warmup):
            self.invoke(native)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.invoke(native)
            times.append(time.perf_counter() - t0)
        return times


class OnnxRunner(Runner):
    """onnxruntime on the CPU with an explicit thread count."""

    runtime = "onnxruntime"
    layout_preference = ("NCHW", "NHWC")

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BadInputError(f"onnxruntime cannot load {Path(path).name}: {_first_line(exc)}") from None
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else 0 for d in inp.shape)

    def invoke(self, native: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input_name: native})[0]


class TFLiteRunner(Runner):
    """The LiteRT (ai_edge_litert) Interpreter; int8 io is (de)quantized here."""

    runtime = "litert"
    layout_preference = ("NHWC", "NCHW")

    def __init__(self, path: Path, threads: int = 1):
        interpreter_mod = require_quiet("ai_edge_litert.interpreter")
        try:
            with quiet_native():  # LiteRT announces its XNNPACK delegate on stderr
                self._it = interpreter_mod.Interpreter(model_path=str(path), num_threads=threads)
                self._it.allocate_tensors()
        except Exception as exc:
            raise BadInputError(f"LiteRT cannot load {Path(path).name}: {_first_line(exc)}") from None
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._in["shape"])

    def invoke(self, native: np.ndarray) -> np.ndarray:
        self._it.set_tensor(self._in["index"], quantize_tensor(native, self._in))
        self._it.invoke()
        return dequantize_tensor(self._it.get_tensor(self._out["index"]), self._out)

    def time_runs(self, x: np.ndarray, runs: int = 50, warmup: int = 5) -> List[float]:
        """Seconds per invoke, with the input tensor set once (as on a device)."""
        native = quantize_tensor(self.to_native(x)[: self.input_shape[0]], self._in)
        self._it.set_tensor(self._in["index"], native)
        for _ in range(warmup):
            self._it.invoke()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self._it.invoke()
            times.append(time.perf_counter() - t0)
        return times


def load_runner(artifact: str | Path, threads: int = 1) -> Runner:
    """A host runner for a .onnx or .tflite artifact."""
    path = Path(artifact)
    if not path.is_file():
        raise BadInputError(f"no such artifact: {path}")
    if threads < 1:
        raise BadInputError(f"threads must be >= 1, got {threads}")
    kinds = {".onnx": OnnxRunner, ".tflite": TFLiteRunner}
    if path.suffix.lower() not in kinds:
        raise BadInputError(f"unknown artifact type {path.suffix!r}: expected .onnx or .tflite")
    return kinds[path.suffix.lower()](path, threads)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
