"""The built-in data set: the real MNIST test set (10,000 digits, LeCun, Cortes and Burges,
CC BY-SA 3.0), shipped in the package and split once, stratified, with a fixed seed.

The split (8,000 train / 1,000 val / 1,000 test) never changes between releases, so results
stay comparable.
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from typing import Dict, Tuple

import numpy as np

SPLIT_SEED = 20240501
SPLIT_SIZES = {"train": 8000, "val": 1000, "test": 1000}


def _read_idx(name: str, header: int) -> np.ndarray:
    blob = resources.files("edgeprune.data").joinpath("mnist", name).read_bytes()
    return np.frombuffer(gzip.decompress(blob), dtype=np.uint8, offset=header)


@lru_cache(maxsize=1)
def load_mnist_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """All 10,000 images (N, 28, 28) uint8 and labels (N,) uint8."""
    images = _read_idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx("t10k-labels-idx1-ubyte.gz", 8)
    return images, labels


def stratified_split(labels: np.ndarray, fractions: Dict[str, float], seed: int = SPLIT_SEED
                     ) -> Dict[str, np.ndarray]:
    """Indices per split, each class divided in the same proportions, order fixed by `seed`."""
    rng = np.random.RandomState(seed)
    parts: Dict[str, list] = {name: [] for name in fractions}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        start = 0
        for i, (name, frac) in enumerate(fractions.items()):
            stop = len(idx) if i == len(fractions) - 1 else start + int(round(frac * len(idx)))
            parts[name].append(idx[start:stop])
            start = stop
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


@lru_cache(maxsize=1)
def mnist_split_indices() -> Dict[str, np.ndarray]:
    """The fixed built-in split of the 10,000 images."""
    _, labels = load_mnist_arrays()
    total = sum(SPLIT_SIZES.values())
    return stratified_split(labels, {k: v / total for k, v in SPLIT_SIZES.items()})
