"""Export configuration: one validated dataclass that round-trips to a dict."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from edgeprune.errors import BadInputError

FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "dynamic")
NODE_PRECISIONS = ("fp32", "int8")
CALIBRATIONS = ("minmax", "percentile", "auto")
EXPORTERS = ("torchscript", "dynamo")
CONFIG_VERSION = 1


@dataclass
class ExportConfig:
    """What to export and how.

    Args:
        format: "onnx" or "tflite".
        precision: fp32, fp16 (fp16 weights), int8 (static, calibrated on `data`), or
            dynamic (int8 weights, float activations).
        node_precision: per-node overrides for int8 ("fp32" keeps a node in float, "int8"
            quantizes one that float_sensitive would keep). Keys are torch module names
            ("layer1.0.conv1") or artifact node names.
        float_sensitive: int8 only: keep numerically sensitive layers in float by themselves
            (squeeze-excite gates and their multiplies, hardswish, the first and the last
            weighted layer; see edgeprune.export.sensitive). TFLite int8 then has float
            input/output.
        min_agreement: int8 with float_sensitive: the top-1 agreement with float that the
            measured float fallback restores (edgeprune.export.fallback), measured on
            `check_samples`; 0 turns it off. Layers overridden to "int8" stay int8.
        check_samples: int8: how many samples the fallback measures agreement on: of the
            export's `check_data` when one is given (images the model did not train on:
            training images agree more, and a fallback satisfied on them left GhostNet at
            0.964 on test images), else of the data set after the calibration ones (the
            calibration ones when the data set has no more). 1,000 by default: at 0.99
            agreement, 512 images tell it within +-0.009 (two standard errors), 1,000 within
            +-0.006.
        calibration_samples: how many samples of the data set calibrate int8.
        calibration: int8 activation ranges: "minmax", "percentile" (ranges at the
            99.999th percentile of the calibration values), or "auto" (minmax, percentile
            99.999 and 99.99 are each tried and the one whose logits agree best with float
            on the calibration samples is kept).
        bias_correction: int8: cancel the mean shift that int8 weight rounding gives each
            output channel (edgeprune.export._bias_correction). TFLite: applied; ONNX:
            applied with an explicit calibration, one more candidate measured under "auto".
        per_channel: per-output-channel weight scales for int8.
        int8_io: TFLite int8 only: int8 input and output tensors (deployable on
            integer-only accelerators); False keeps float input/output around int8 internals.
        opset: ONNX opset (>= 17).
        batch_size: the static batch dimension of the artifact.
        input_shape: [C, H, W]; None takes it from the checkpoint's metadata.
        exporter: torch.onnx exporter; "torchscript" names nodes after modules.
    """

    format: str = "onnx"
    precision: str = "fp32"
    node_precision: Dict[str, str] = field(default_factory=dict)
    float_sensitive: bool = True
    min_agreement: float = 0.995
    check_samples: int = 1000
    calibration_samples: int = 128
    calibration: str = "auto"
    bias_correction: bool = True
    per_channel: bool = True
    int8_io: bool = True
    opset: int = 17
    batch_size: int = 1
    input_shape: Optional[Tuple[int, int, int]] = None
    exporter: str = "torchscript"
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self._check_choice("format", self.format, FORMATS)
        self._check_choice("precision", self.precision, PRECISIONS)
        self._check_choice("exporter", self.exporter, EXPORTERS)
        self._check_choice("calibration", self.calibration, CALIBRATIONS)
        for name, prec in self.node_precision.items():
            self._check_choice(f"node_precision[{name!r}]", prec, NODE_PRECISIONS)
        if self.node_precision and self.precision != "int8":
            raise BadInputError("node_precision overrides need precision='int8'")
        if self.opset < 17:
            raise BadInputError(f"opset must be >= 17, got {self.opset}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise BadInputError(f"min_agreement must be within 0..1, got {self.min_agreement}")
        if self.calibration_samples < 1 or self.batch_size < 1 or self.check_samples < 0:
            raise BadInputError("calibration_samples and batch_size must be >= 1, check_samples >= 0")
        if self.input_shape is not None:
            self.input_shape = tuple(int(d) for d in self.input_shape)
            if len(self.input_shape) != 3 or min(self.input_shape) < 1:
                raise BadInputError(f"input_shape must be [C, H, W], got {list(self.input_shape)}")
        if self.version != CONFIG_VERSION:
            raise BadInputError(f"ExportConfig version {self.version} is not {CONFIG_VERSION}")

    @staticmethod
    def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
        if value not in choices:
            raise BadInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")

    @classmethod
    def for_path(cls, out: str | Path, **kwargs: Any) -> "ExportConfig":
        """A config whose format is taken from the file suffix (.onnx or .tflite)."""
        suffix = Path(out).suffix.lstrip(".").lower()
        if suffix not in FORMATS:
            raise BadInputError(f"cannot tell the format of {out}: use a .onnx or .tflite name")
        return cls(format=suffix, **kwargs)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict; from_dict(to_dict()) gives an equal config."""
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ExportConfig":
        """Build a config from a dict, rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BadInputError(f"unknown ExportConfig keys: {', '.join(unknown)}")
        return cls(**d)
