"""Helpers every exporter, runner and the verifier share: an error in one line, and SQNR.

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
