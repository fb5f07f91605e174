"""Readers for user data: .npz files and image folders; conversion to model-ready tensors."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from edgeprune.data.mnist import stratified_split
from edgeprune.errors import BadInputError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}


def load_npz(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """x (N, H, W), (N, H, W, C) or (N, C, H, W) and integer labels y (N,)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise BadInputError(f"{path} must hold arrays 'x' and 'y' (has: {', '.join(f.files)})")
            x, y = f["x"], f["y"]
    except FileNotFoundError:
        raise BadInputError(f"data set not found: {path}") from None
    except (ValueError, OSError) as exc:
        raise BadInputError(f"cannot read {path} as .npz: {exc}") from None
    if x.ndim not in (3, 4):
        raise BadInputError(f"{path}: x must be (N, H, W) or (N, H, W, C) or (N, C, H, W), got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise BadInputError(f"{path}: y must be one label per image ({len(x)}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise BadInputError(f"{path}: labels y must be integers 0..K-1, got {y.dtype}")
    check_pixels(x, str(path))
    return x, y.astype(np.int64)


def check_pixels(x: np.ndarray, name: str) -> None:
    """Images must be uint8 0-255 or float 0-1: anything else would be scaled wrongly in
    silence (sklearn's digits are float 0-16 and trained to chance)."""
    if x.dtype == np.uint8 or x.size == 0:
        return
    if np.issubdtype(x.dtype, np.floating):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise BadInputError(f"{name}: x has {bad} NaN or infinite values; fix or drop those images")
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0 and hi <= 1:
            return
        raise BadInputError(f"{name}: x is {x.dtype} with values {lo:g} to {hi:g}, but float images "
                            f"must lie in 0-1 (or be uint8 0-255): {_rescale_hint(lo, hi)}")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        lo, hi = int(x.min()), int(x.max())
        hint = ("store them as x.astype(np.uint8)" if 0 <= lo and 128 < hi <= 255
                else _rescale_hint(lo, hi) + " and store float32")
        raise BadInputError(f"{name}: x is {x.dtype} with values {lo} to {hi}; images must be "
                            f"uint8 0-255 or float 0-1: {hint}")
    raise BadInputError(f"{name}: x has dtype {x.dtype}; images must be uint8 0-255 or float 0-1")


def _rescale_hint(lo: float, hi: float) -> str:
    if lo < 0:
        return "they look normalized (mean/std); store the images before normalization, in 0-1"
    if hi <= 255:
        scale = 255 if hi > 128 else int(np.ceil(hi))
        return f"divide by {scale} (x / {scale})"
    return "rescale them to 0-1 (for example x / x.max())"


# The fixed 80/10/10 split gives every class a sample in val and test from 8 samples on;
# 10 leaves a margin and is easy to state.
MIN_PER_CLASS = 10


def check_labels(labels: np.ndarray, num_classes: Optional[int], name: str) -> int:
    """Labels are integers 0..K-1 with K >= 2 and no gaps; returns K (or `num_classes`)."""
    if labels.size == 0:
        raise BadInputError(f"data set {name} has no samples")
    if labels.min() < 0:
        raise BadInputError(f"data set {name} has a negative label ({labels.min()}); labels must be 0..K-1")
    present = np.unique(labels)
    if len(present) < 2:
        raise BadInputError(f"data set {name} has one class only (label {present[0]}); a classifier needs two or more")
    classes = num_classes or int(labels.max()) + 1
    if labels.max() >= classes:
        raise BadInputError(f"data set {name} has label {labels.max()} out of range for {classes} classes")
    missing = np.setdiff1d(np.arange(int(labels.max()) + 1), present)
    if missing.size:
        raise BadInputError(
            f"data set {name} has no sample of label {missing[0]} ({missing.size} labels missing); labels "
            f"must be 0..K-1 without gaps: renumber them (np.unique(y, return_inverse=True)[1])")
    return classes


def check_split(labels: np.ndarray, name: str) -> None:
    """Enough samples per class that train, val and test each get some."""
    counts = np.bincount(labels)
    fewest = int(np.argmin(counts))
    if counts[fewest] < MIN_PER_CLASS:
        raise BadInputError(
            f"data set {name}: class {fewest} has {counts[fewest]} samples; the 80/10/10 "
            f"train/val/test split needs at least {MIN_PER_CLASS} per class")


def load_folder(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """An image folder with one subfolder per class (sorted names give labels 0, 1, ...)."""
    from PIL import Image  # pillow comes with matplotlib

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    files = [(f, label) for label, d in enumerate(classes) for f in sorted(d.iterdir())
             if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise BadInputError(f"image folder {path} has no images in class subfolders")
    empty = [d.name for label, d in enumerate(classes) if not any(lab == label for _, lab in files)]
    if empty:
        raise BadInputError(f"image folder {path}: class folder {empty[0]!r} has no images "
                            f"({', '.join(sorted(_IMAGE_SUFFIXES))}); remove it or add images")
    images = []
    for f, _ in files:
        try:
            images.append(np.asarray(Image.open(f).convert("RGB")))
        except OSError as exc:
            raise BadInputError(f"cannot read image {f}: {exc}") from None
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise BadInputError(f"images in {path} differ in size ({sorted(shapes)[:3]}); resize them first")
    return np.stack(images), np.asarray([label for _, label in files], dtype=np.int64)


def split_arrays(labels: np.ndarray) -> Dict[str, np.ndarray]:
    """The fixed stratified 80/10/10 split used for every user data set."""
    return stratified_split(labels, {"train": 0.8, "val": 0.1, "test": 0.1})


def images_to_tensor(images: np.ndarray, channels: Optional[int], size: Optional[int]) -> torch.Tensor:
    """Images as float32 NCHW in [0, 1], converted to `channels` and resized to `size`."""
    x = torch.as_tensor(np.ascontiguousarray(images))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise BadInputError(f"images must have 1 or 3 channels, got shape {tuple(x.shape)}")
    x = _to_channels(x, channels)
    if size is not None and x.shape[-1] != size:
        x = _resize(x, size)
    return x.contiguous()


def _to_channels(x: torch.Tensor, channels: Optional[int]) -> torch.Tensor:
    if channels is None or channels == x.shape[1]:
        return x
    if channels == 3:
        return x.repeat(1, 3, 1, 1)
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)
    raise BadInputError(f"channels must be 1 or 3, got {channels}")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h == w == 28 and size == 32:  # MNIST to 32 px: pad, as LeNet did, rather than blur
        return torch.nn.functional.pad(x, (2, 2, 2, 2))
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
