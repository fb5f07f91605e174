"""Export to ONNX and TFLite (fp32, fp16, int8, dynamic, mixed) and verify against PyTorch.

    cfg = ExportConfig(format="tflite", precision="int8")
    path = export("model.pt", cfg, "model.tflite", data="mnist")
    result = verify(path, "model.pt", data="mnist")   # VerifyResult; result.to_dict()
    float_layers(path)     # the layers int8 kept in float (SE gates, first/last layer, ...)
    int8_slowdown_note(int8_p50_ms, fp32_p50_ms, "x86-ort")   # a warning line, or None

tensorflow and onnx2tf are imported only when a TFLite artifact is made or read.
"""
from __future__ import annotations

from edgeprune.export._export import export, export_artifact, export_many
from edgeprune.export.config import FORMATS, PRECISIONS, ExportConfig
from edgeprune.export.precision import artifact_precision, node_precisions
from edgeprune.export.runtime import Runner, load_runner
from edgeprune.export.sensitive import float_layers
from edgeprune.export.speed import int8_slowdown, int8_slowdown_note
from edgeprune.export.verify import DEFAULT_TOP1_AGREEMENT, VerifyResult, sqnr_db, verify

__all__ = [
    "ExportConfig", "FORMATS", "PRECISIONS", "export", "export_many", "export_artifact", "verify", "VerifyResult",
    "DEFAULT_TOP1_AGREEMENT", "sqnr_db", "artifact_precision", "node_precisions", "load_runner",
    "Runner", "float_layers", "int8_slowdown", "int8_slowdown_note",
]

