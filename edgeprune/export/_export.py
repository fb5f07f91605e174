"""The export verb: model or checkpoint + ExportConfig -> one artifact file, written atomically."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune._io import atomic_path
from edgeprune.errors import BadInputError
from edgeprune.export import onnx as onnx_export
from edgeprune.export import tflite as tflite_export
from edgeprune.export._source import Source, resolve_data, resolve_model
from edgeprune.export.config import ExportConfig


def export(model_or_checkpoint: Any, cfg: ExportConfig, out: str | Path, data: Any = None,
           weights: Optional[str] = None) -> Path:
    """Export a model (nn.Module, Checkpoint or checkpoint path) to `out`; returns the path.

    `data` (a data set name or path, LabeledData, or NCHW arrays) calibrates int8; when None
    the checkpoint's own data set is used. Nothing is left at `out` if anything fails.
    """
    out = Path(out)
    src = resolve_model(model_or_checkpoint, cfg.input_shape, weights)
    calibration = _calibration(src, cfg, data)
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="edgeprune-export-") as work:
        fp32 = Path(work) / "model.onnx"
        onnx_export.torch_to_onnx(src.model, src.input_shape, fp32, cfg.opset, cfg.batch_size, cfg.exporter)
        if cfg.format == "onnx":
            _finish_onnx(fp32, tmp, cfg, calibration)
        else:
            _finish_tflite(fp32, Path(work), tmp, cfg, calibration, src)
    return out


def export_artifact(model_or_checkpoint: Any, out: str | Path, precision: str = "fp32",
                    data: Any = None, **options: Any) -> Path:
    """Shorthand: the format comes from the suffix of `out` (.onnx or .tflite)."""
    cfg = ExportConfig.for_path(out, precision=precision, **options)
    return export(model_or_checkpoint, cfg, out, data=data)


def _calibration(src: Source, cfg: ExportConfig, data: Any) -> Optional[np.ndarray]:
    """NCHW calibration samples for int8; None when the precision needs none."""
    if cfg.precision != "int8":
        return None
    data = data if data is not None else src.dataset
    if data is None:
        raise BadInputError("int8 export needs calibration data: pass --data (e.g. mnist)")
    return resolve_data(data, src.input_shape, limit=cfg.calibration_samples).x


def _finish_onnx(fp32: Path, dst: Path, cfg: ExportConfig, calibration: Optional[np.ndarray]) -> None:
    if cfg.precision == "fp32":
        dst.write_bytes(fp32.read_bytes())
    elif cfg.precision == "fp16":
        onnx_export.to_fp16(fp32, dst)
    elif cfg.precision == "dynamic":
        onnx_export.quantize_dynamic(fp32, dst, cfg.per_channel)
    else:
        keep = [name for name, prec in cfg.node_precision.items() if prec == "fp32"]
        onnx_export.quantize_int8(fp32, dst, calibration, cfg.per_channel, keep)


def _finish_tflite(fp32: Path, work: Path, dst: Path, cfg: ExportConfig,
                   calibration: Optional[np.ndarray], src: Source) -> None:
    samples = calibration if calibration is not None else _placeholder(src)
    samples_nhwc = tflite_export.nhwc(samples)
    saved = tflite_export.onnx_to_saved_model(fp32, work, samples_nhwc)
    keep = [name for name, prec in cfg.node_precision.items() if prec == "fp32"]
    if keep:
        float_model = tflite_export.saved_model_to_tflite(saved, "fp32")
        keep = tflite_export.tflite_nodes_for(onnx_export.check_onnx(fp32), float_model, keep)
    dst.write_bytes(tflite_export.saved_model_to_tflite(
        saved, cfg.precision, samples_nhwc, cfg.per_channel, cfg.int8_io, keep))


def _placeholder(src: Source) -> np.ndarray:
    """Stand-in samples for onnx2tf's internal checks when no data set is needed."""
    return np.random.default_rng(0).random((4, *src.input_shape), dtype=np.float32)
