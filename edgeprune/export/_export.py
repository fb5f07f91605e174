"""The export verb: model or checkpoint + ExportConfig -> artifact files, each written atomically."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx

from edgeprune._io import atomic_path
from edgeprune.errors import BadInputError
from edgeprune.export import onnx as onnx_export
from edgeprune.export import tflite as tflite_export
from edgeprune.export._bias_correction import bias_corrected
from edgeprune.export._source import Source, resolve_data, resolve_model
from edgeprune.export.config import ExportConfig
from edgeprune.export.sensitive import sensitive_onnx_nodes, sensitive_tflite_ops, without
from edgeprune.export.verify import DEFAULT_TOP1_AGREEMENT

# The int8 fallback may float past its share of layers to reach verification's int8 line by
# this margin: checked on 1,000 images, an artifact at the line itself fails on others half the time
VERIFY_MARGIN = 0.01


def export(model_or_checkpoint: Any, cfg: ExportConfig, out: str | Path, data: Any = None,
           weights: Optional[str] = None, check_data: Any = None) -> Path:
    """Export a model (nn.Module, Checkpoint or checkpoint path) to `out`; returns the path.

    `data` (a data set name or path, LabeledData, or NCHW arrays) calibrates int8; when None
    the checkpoint's own data set is used. `check_data` (the same kinds), when given, is what
    the int8 float fallback measures agreement on: pass images the model did not train on
    (a validation split). Nothing is left at `out` if anything fails.
    """
    return export_many(model_or_checkpoint, {out: cfg}, data=data, weights=weights, check_data=check_data)[0]


def export_many(model_or_checkpoint: Any, jobs: Mapping[str | Path, ExportConfig], data: Any = None,
                weights: Optional[str] = None, check_data: Any = None) -> List[Path]:
    """Export one model to several artifacts ({out: config}), converting it to ONNX and, for
    TFLite, to a TensorFlow model once for all of them. Returns the paths in the order given.

    Calibration data is checked before any file is written; each artifact is written atomically.
    `check_data` as in `export`.
    """
    todo = [(Path(out), cfg) for out, cfg in jobs.items()]
    if not todo:
        raise BadInputError("nothing to export: pass at least one {out: ExportConfig}")
    shapes = {cfg.input_shape for _, cfg in todo}
    if len(shapes) > 1:
        raise BadInputError("export_many needs the same input_shape in every config")
    src = resolve_model(model_or_checkpoint, shapes.pop(), weights)
    calibration = _calibration(src, [cfg for _, cfg in todo], data)
    held_out = _held_out(src, [cfg for _, cfg in todo], check_data)
    with tempfile.TemporaryDirectory(prefix="edgeprune-export-") as work:
        stages = _Stages(src, Path(work), calibration, held_out)
        for out, cfg in todo:
            with atomic_path(out) as tmp:
                _write(stages, cfg, tmp)
    return [out for out, _ in todo]


def export_artifact(model_or_checkpoint: Any, out: str | Path, precision: str = "fp32",
                    data: Any = None, check_data: Any = None, **options: Any) -> Path:
    """Shorthand: the format comes from the suffix of `out` (.onnx or .tflite)."""
    cfg = ExportConfig.for_path(out, precision=precision, **options)
    return export(model_or_checkpoint, cfg, out, data=data, check_data=check_data)


def _calibration(src: Source, cfgs: Sequence[ExportConfig], data: Any) -> Optional[np.ndarray]:
    """NCHW calibration and check samples for the int8 configs (as many as the largest asks);
    None if none."""
    wanted = [cfg.calibration_samples + cfg.check_samples for cfg in cfgs if cfg.precision == "int8"]
    if not wanted:
        return None
    data = data if data is not None else src.dataset
    if data is None:
        raise BadInputError("int8 export needs calibration data: pass --data (e.g. mnist)")
    return resolve_data(data, src.input_shape, limit=max(wanted)).x


def _held_out(src: Source, cfgs: Sequence[ExportConfig], check_data: Any) -> Optional[np.ndarray]:
    """The int8 fallback's check samples from `check_data` (as many as the largest config asks);
    None without check_data or int8 configs that check."""
    wanted = [cfg.check_samples for cfg in cfgs if cfg.precision == "int8" and cfg.check_samples]
    if check_data is None or not wanted:
        return None
    return resolve_data(check_data, src.input_shape, limit=max(wanted)).x


class _Stages:
    """The intermediate fp32 ONNX files and onnx2tf models of one export_many call, made once."""

    def __init__(self, src: Source, work: Path, calibration: Optional[np.ndarray],
                 held_out: Optional[np.ndarray] = None):
        self.src, self.work = src, work
        self.calibration, self.held_out = calibration, held_out
        self._onnx: Dict[Tuple, Path] = {}
        self._tf: Dict[Path, Any] = {}
        self._corrected: Dict[Tuple, Path] = {}

    def samples(self, cfg: ExportConfig) -> Optional[np.ndarray]:
        if cfg.precision != "int8" or self.calibration is None:
            return None
        return self.calibration[:cfg.calibration_samples]

    def checks(self, cfg: ExportConfig) -> Optional[np.ndarray]:
        """Held-out samples the int8 float fallback measures agreement on: the check data's,
        else the data set's after the calibration ones (see ExportConfig)."""
        if cfg.precision != "int8" or self.calibration is None:
            return None
        if self.held_out is not None and cfg.check_samples:
            return self.held_out[:cfg.check_samples]
        held_out = self.calibration[cfg.calibration_samples:cfg.calibration_samples + cfg.check_samples]
        return held_out if len(held_out) else self.samples(cfg)

    def onnx(self, cfg: ExportConfig) -> Path:
        key = (cfg.opset, cfg.batch_size, cfg.exporter)
        if key not in self._onnx:
            path = self.work / f"fp32-{len(self._onnx)}.onnx"
            onnx_export.torch_to_onnx(self.src.model, self.src.input_shape, path, *key)
            self._onnx[key] = path
        return self._onnx[key]

    def source_for_tflite(self, cfg: ExportConfig) -> Path:
        """The fp32 ONNX file TFLite starts from: bias-corrected for int8 (see _bias_correction)."""
        fp32 = self.onnx(cfg)
        if cfg.precision != "int8" or not cfg.bias_correction:
            return fp32
        kept = tuple(_onnx_float_nodes(fp32, cfg))
        key = (fp32, kept, cfg.calibration_samples, cfg.per_channel)
        if key not in self._corrected:
            model = bias_corrected(onnx_export.check_onnx(fp32), self.samples(cfg), list(kept), cfg.per_channel)
            self._corrected[key] = self.work / f"corrected-{len(self._corrected)}.onnx"
            onnx.save(model, str(self._corrected[key]))
        return self._corrected[key]

    def tf_model(self, cfg: ExportConfig) -> Any:
        fp32 = self.source_for_tflite(cfg)
        if fp32 not in self._tf:
            work = self.work / f"tf-{len(self._tf)}"
            work.mkdir()
            samples = self.calibration if self.calibration is not None else _placeholder(self.src)
            self._tf[fp32] = tflite_export.onnx_to_keras(fp32, work, tflite_export.nhwc(samples))
        return self._tf[fp32]


def _write(stages: _Stages, cfg: ExportConfig, dst: Path) -> None:
    if cfg.format == "onnx":
        _finish_onnx(stages.onnx(cfg), dst, cfg, stages.samples(cfg), stages.checks(cfg))
    else:
        _finish_tflite(stages, dst, cfg)


def _finish_onnx(fp32: Path, dst: Path, cfg: ExportConfig, calibration: Optional[np.ndarray],
                 checks: Optional[np.ndarray]) -> None:
    if cfg.precision == "fp32":
        dst.write_bytes(fp32.read_bytes())
    elif cfg.precision == "fp16":
        onnx_export.to_fp16(fp32, dst)
    elif cfg.precision == "dynamic":
        onnx_export.quantize_dynamic(fp32, dst, cfg.per_channel)
    else:
        pinned = onnx_export.resolve_nodes(onnx_export.check_onnx(fp32), _named(cfg, "int8"))
        onnx_export.quantize_int8(fp32, dst, calibration, cfg.per_channel, _onnx_float_nodes(fp32, cfg),
                                  cfg.calibration, cfg.bias_correction, _fallback_target(cfg), checks, pinned,
                                  _fallback_floor(cfg))


def _fallback_target(cfg: ExportConfig) -> float:
    """The agreement the float fallback restores; 0 (off) when the user asked for all-int8."""
    return cfg.min_agreement if cfg.float_sensitive else 0.0


def _fallback_floor(cfg: ExportConfig) -> float:
    """The agreement the fallback reaches even past its share of floated layers (see
    fallback.ladder): verification's int8 line plus VERIFY_MARGIN, at most the target."""
    return min(_fallback_target(cfg), DEFAULT_TOP1_AGREEMENT["int8"] + VERIFY_MARGIN)


def _onnx_float_nodes(fp32: Path, cfg: ExportConfig) -> List[str]:
    """ONNX nodes int8 keeps in float: the sensitive ones, the user's fp32 overrides, less the
    user's int8 overrides."""
    model = onnx_export.check_onnx(fp32)
    auto = sensitive_onnx_nodes(model) if cfg.float_sensitive else []
    keep = onnx_export.resolve_nodes(model, _named(cfg, "fp32"))
    return without([*auto, *keep], onnx_export.resolve_nodes(model, _named(cfg, "int8")))


def _finish_tflite(stages: _Stages, dst: Path, cfg: ExportConfig) -> None:
    if cfg.precision != "int8":
        dst.write_bytes(tflite_export.keras_to_tflite(stages.tf_model(cfg), cfg.precision))
        return
    first = _TfliteInt8(stages, cfg)
    built = first.build([])
    if _fallback_target(cfg) > 0:
        built = _tflite_fallback(stages, cfg, built)
    dst.write_bytes(built)


class _TfliteInt8:
    """int8 builds of one onnx2tf model: its float TFLite, the ops the rules keep in float, and
    int8 with more ops kept in float."""

    def __init__(self, stages: _Stages, cfg: ExportConfig):
        self.cfg, self.model = cfg, stages.tf_model(cfg)
        self.samples_nhwc = tflite_export.nhwc(stages.samples(cfg))
        self.float_model = tflite_export.keras_to_tflite(self.model, "fp32")
        self.keep = _tflite_float_ops(stages, cfg, self.float_model) if cfg.float_sensitive or cfg.node_precision else []
        self.pinned = _tflite_nodes(stages, cfg, self.float_model, "int8")  # the user's int8 overrides

    def build(self, floated: List[str]) -> bytes:
        cfg = self.cfg
        return tflite_export.keras_to_tflite(self.model, "int8", self.samples_nhwc, cfg.per_channel, cfg.int8_io,
                                             [*self.keep, *floated], cfg.calibration)


def _tflite_fallback(stages: _Stages, cfg: ExportConfig, first: bytes) -> bytes:
    """TFLite int8 through the measured float fallback (edgeprune.export.fallback). Its rungs
    start from the model without bias correction: a layer moved to float must not keep a bias
    corrected for int8 rounding it no longer has (measured: a fully floated model at 20 dB)."""
    from edgeprune.export import _tflite_calibration, fallback
    from edgeprune.export.runtime import load_runner

    fp32, checks = stages.onnx(cfg), stages.checks(cfg)
    reference, checks_nhwc = load_runner(fp32).run(checks), tflite_export.nhwc(checks)
    plain: List[_TfliteInt8] = []  # made only when the first artifact disagrees

    def rungs() -> _TfliteInt8:
        if not plain:
            plain.append(_TfliteInt8(stages, dataclasses.replace(cfg, bias_correction=False)))
        return plain[0]

    def score(model: bytes) -> Tuple[float, float]:
        return _tflite_calibration.agreement(model, checks_nhwc, reference)

    def ranked() -> List[List[str]]:
        base = rungs()
        costly = fallback.costly_tflite_ops(base.float_model, base.build([]), base.samples_nhwc)
        pinned = set(base.keep) | set(base.pinned)
        return [[op for op in ops if op not in pinned] for ops, _ in costly]

    def measured(floated: List[str]) -> Tuple[bytes, Tuple[float, float]]:
        model = rungs().build(floated)
        return model, score(model)

    return fallback.ladder(first, score(first), cfg.min_agreement, ranked, measured, _fallback_floor(cfg))[0]


def _tflite_float_ops(stages: _Stages, cfg: ExportConfig, float_model: bytes) -> List[str]:
    """TFLite op outputs int8 keeps in float (as _onnx_float_nodes, matched in the float model)."""
    auto = sensitive_tflite_ops(float_model) if cfg.float_sensitive else []
    named = lambda p: _tflite_nodes(stages, cfg, float_model, p)  # noqa: E731
    return without([*auto, *named("fp32")], named("int8"))


def _tflite_nodes(stages: _Stages, cfg: ExportConfig, float_model: bytes, precision: str) -> List[str]:
    """TFLite op outputs of the layers the user set to `precision`."""
    if not _named(cfg, precision):
        return []
    return tflite_export.tflite_nodes_for(onnx_export.check_onnx(stages.onnx(cfg)), float_model, _named(cfg, precision))


def _named(cfg: ExportConfig, precision: str) -> List[str]:
    return [name for name, prec in cfg.node_precision.items() if prec == precision]


def _placeholder(src: Source) -> np.ndarray:
    """Stand-in samples for onnx2tf's internal checks when no data set is needed."""
    return np.random.default_rng(0).random((4, *src.input_shape), dtype=np.float32)
