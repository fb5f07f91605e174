"""Helpers every exporter, runner and the verifier share: an error in one line, SQNR and top-1
agreement.

A leaf: it imports nothing from edgeprune.export, so any module of the package can use it.
"""
from __future__ import annotations

import math

import numpy as np


def first_line(exc: BaseException) -> str:
    """"Type: first line of the message", at most 300 characters: a cause a user can read."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; inf when the outputs are identical."""
    noise = float(np.sum((reference.astype(np.float64) - actual) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


# Reference logits whose top two lie within this share of the sample's largest |logit| are a
# tie: float reordering alone (an fp32 artifact is off by about 1e-5 of the logits) may break it
# either way, so either class counts as agreement. An int8 flip is far wider than this.
TIE_RTOL = 1e-4


def top1_agreement(reference: np.ndarray, actual: np.ndarray) -> float:
    """Share of samples whose top-1 class in `actual` is the reference's, or ties with it."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    got = actual.reshape(len(actual), -1)
    picked = ref[np.arange(len(ref)), got.argmax(1)]
    tol = TIE_RTOL * np.maximum(np.abs(ref).max(1), 1e-12)
    return float(np.mean(picked >= ref.max(1) - tol))
