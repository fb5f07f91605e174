"""Is int8 worth it on this target? A note when int8 measured slower than fp32.

int8 pays only where the runtime has int8 kernels for the model's layers: onnxruntime's CPU
provider ran int8 QDQ graphs 3-13x slower than fp32 on depthwise and LayerNorm nets (each
Q/DQ pair around an op without an int8 kernel costs two passes over the tensor).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from edgeprune.errors import BadInputError

# below this ratio a slower int8 is within run-to-run noise of a CPU measurement
SLOWER_RATIO = 1.05


def int8_slowdown(int8_p50_ms: float, fp32_p50_ms: float) -> Dict[str, Any]:
    """Both p50s, their ratio, and `slower`: int8 measured more than 5% slower than fp32."""
    if int8_p50_ms <= 0 or fp32_p50_ms <= 0:
        raise BadInputError(f"latencies must be positive, got int8 {int8_p50_ms} and fp32 {fp32_p50_ms}")
    ratio = int8_p50_ms / fp32_p50_ms
    return {"slower": ratio > SLOWER_RATIO, "int8_p50_ms": round(int8_p50_ms, 4),
            "fp32_p50_ms": round(fp32_p50_ms, 4), "ratio": round(ratio, 3)}


def int8_slowdown_note(int8_p50_ms: float, fp32_p50_ms: float, target: Optional[str] = None) -> Optional[str]:
    """One line for the user when int8 measured slower than fp32 on `target`; None otherwise."""
    d = int8_slowdown(int8_p50_ms, fp32_p50_ms)
    if not d["slower"]:
        return None
    where = f" on {target}" if target else ""
    return (f"warning: int8 is {d['ratio']:.1f}x slower than fp32{where} (p50 {d['int8_p50_ms']:.3g} ms vs "
            f"{d['fp32_p50_ms']:.3g} ms): the runtime lacks fast int8 kernels for some of its layers "
            f"(depthwise, LayerNorm, ops kept in float); ship fp32 or fp16 there unless size matters more")
