"""The precision of an artifact and of each of its weighted ops, read from the file's tensor types."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from edgeprune.errors import BadInputError


def artifact_precision(path: str | Path) -> str:
    """fp32, fp16, int8, dynamic or mixed, read from the artifact's tensor types."""
    return _reader(path)[0](Path(path))


def node_precisions(path: str | Path) -> Dict[str, str]:
    """Precision of each weighted op (conv, fully connected) of an artifact, by node name."""
    return _reader(path)[1](Path(path))


def _reader(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"no such artifact: {p}")
    if p.suffix.lower() == ".onnx":
        from edgeprune.export import onnx as onnx_export

        return onnx_export.onnx_precision, lambda q: onnx_export.node_precisions(onnx_export.check_onnx(q))
    if p.suffix.lower() == ".tflite":
        from edgeprune.export import tflite as tflite_export

        return tflite_export.tflite_precision, tflite_export.tflite_node_precisions
    raise BadInputError(f"unknown artifact type {p.suffix!r}: expected .onnx or .tflite")
