"""Verification: run an artifact and its PyTorch reference on the same samples and compare.

Reported: max abs diff of the logits, SQNR in dB (reference power over error power), top-1
agreement, and the accuracy of both. `passed` compares top-1 agreement with a per-precision
threshold (fp32 99.9%, fp16 99.5%, int8 / dynamic / mixed 98%), which callers can change. A
sample whose reference top two logits tie (within `_common.TIE_RTOL`) agrees on either class:
CI once failed an fp32 TFLite file (max abs diff ~1e-5) on one such sample of 500.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from edgeprune.errors import BadInputError, TargetUnreachableError
from edgeprune.export._common import sqnr_db, top1_agreement
from edgeprune.export._source import resolve_data, resolve_model
from edgeprune.export.precision import artifact_precision
from edgeprune.export.runtime import load_runner
from edgeprune.export.sensitive import float_layers

DEFAULT_TOP1_AGREEMENT: Dict[str, float] = {
    "fp32": 0.999, "fp16": 0.995, "int8": 0.98, "dynamic": 0.98, "mixed": 0.98,
}


@dataclass
class VerifyResult:
    """What `verify --json` prints; the first eight fields are the DESIGN.md contract.

    `float_layers`: the layers of an int8 artifact that run in float (read from the file:
    ONNX node names, TFLite "OP tensor-name"); empty for fp32, fp16 and dynamic artifacts.
    """

    artifact: str
    target: Optional[str]
    samples: int
    max_abs_diff: float
    top1_agreement: float
    accuracy: Optional[float]
    reference_accuracy: Optional[float]
    passed: bool
    sqnr_db: float
    precision: str
    threshold: float
    float_layers: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (infinite SQNR, for identical outputs, becomes null)."""
        d = asdict(self)
        if not math.isfinite(d["sqnr_db"]):
            d["sqnr_db"] = None
        return d


def verify(artifact: str | Path, reference: Any, data: Any = None, target: Optional[str] = None,
           samples: int = 500, thresholds: Optional[Mapping[str, float]] = None,
           threads: int = 1, weights: Optional[str] = None) -> VerifyResult:
    """Compare `artifact` (run on the host, or on `target`) with `reference` on `data`.

    `data` defaults to the reference checkpoint's data set; `thresholds` overrides the
    minimum top-1 agreement per precision.
    """
    if samples < 1:
        raise BadInputError(f"samples must be >= 1, got {samples}")
    precision = artifact_precision(artifact)
    src = resolve_model(reference, weights=weights)
    batch = resolve_data(data if data is not None else src.dataset, src.input_shape, limit=samples)
    ref = _reference_logits(src.model, batch.x)
    out = _artifact_logits(artifact, batch.x, target, threads)
    if out.shape != ref.shape:
        raise BadInputError(f"artifact output {list(out.shape)} does not match the reference {list(ref.shape)}")
    threshold = {**DEFAULT_TOP1_AGREEMENT, **(thresholds or {})}[precision]
    agreement = top1_agreement(ref, out)
    return VerifyResult(
        artifact=str(artifact), target=target, samples=len(batch.x),
        max_abs_diff=float(np.max(np.abs(out - ref))), top1_agreement=agreement,
        accuracy=_accuracy(out, batch.y), reference_accuracy=_accuracy(ref, batch.y),
        passed=bool(agreement >= threshold and np.isfinite(out).all()),
        sqnr_db=sqnr_db(ref, out), precision=precision, threshold=threshold,
        float_layers=float_layers(artifact) if precision in ("int8", "mixed") else [],
    )


def _reference_logits(model: torch.nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    with torch.no_grad():
        outs = [model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)


def _artifact_logits(artifact: str | Path, x: np.ndarray, target: Optional[str], threads: int) -> np.ndarray:
    if target is None:
        return load_runner(artifact, threads).run(x)
    try:
        from edgeprune.targets import load_target
    except ImportError as exc:
        raise TargetUnreachableError(f"targets are not available in this install ({exc})") from None
    return np.asarray(load_target(target).infer(Path(artifact), x), dtype=np.float32)


def _accuracy(logits: np.ndarray, labels: Optional[np.ndarray]) -> Optional[float]:
    if labels is None:
        return None
    return float(np.mean(logits.argmax(1) == labels))
