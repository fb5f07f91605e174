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
        raise BadInputError(f"{path}: labels must be integers, got {y.dtype}")
    return x, y.astype(np.int64)


def load_folder(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """An image folder with one subfolder per class (sorted names give labels 0, 1, ...)."""
    from PIL import Image  # pillow comes with matplotlib

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    files = [(f, label) for label, d in enumerate(classes) for f in sorted(d.iterdir())
             if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise BadInputError(f"image folder {path} has no images in class subfolders")
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
