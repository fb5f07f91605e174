"""Data sets: the built-in MNIST, .npz files (x, y), image folders, or any torch Dataset.

Every source becomes a LabeledData: float32 NCHW images in [0, 1] and integer labels,
resized to the channels and size the model wants.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgeprune.data.loaders import (
    check_labels, check_split, images_to_tensor, load_folder, load_npz, split_arrays,
)
from edgeprune.data.mnist import load_mnist_arrays, mnist_split_indices
from edgeprune.errors import BadInputError

SPLITS = ("train", "val", "test")
DataSource = Union[str, Path, Dataset]


@dataclass
class LabeledData(Dataset):
    """Images (N, C, H, W) float32 in [0, 1] and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str = ""

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def subset(self, n: int) -> "LabeledData":
        """The first n samples (the split order is already shuffled and stratified)."""
        return LabeledData(self.x[:n], self.y[:n], self.num_classes, self.name)

    def loader(self, batch_size: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, generator=generator)


def load_dataset(source: DataSource = "mnist", split: str = "test", channels: Optional[int] = None,
                 size: Optional[int] = None, num_classes: Optional[int] = None) -> LabeledData:
    """Load a split of a data set as a LabeledData.

    Args:
        source: "mnist" (built in), a .npz with x and y, an image folder, or a torch Dataset.
        split: train, val or test (a fixed stratified 80/10/10 split for files and folders).
        channels, size: convert images to this many channels (1 or 3) and this square size.
        num_classes: labels must lie in [0, num_classes); inferred when not given.
    """
    if split not in SPLITS:
        raise BadInputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    images, labels, name = _read_source(source)
    classes = check_labels(labels, num_classes, name)
    if isinstance(source, Dataset):
        idx = np.arange(len(labels))
    elif name == "mnist":
        idx = mnist_split_indices()[split]
    else:
        check_split(labels, name)
        idx = split_arrays(labels)[split]
    x = images_to_tensor(images[idx], channels, size)
    return LabeledData(x, torch.as_tensor(labels[idx], dtype=torch.int64), classes, name)


def _read_source(source: DataSource) -> Tuple[np.ndarray, np.ndarray, str]:
    if isinstance(source, Dataset):
        return _from_dataset(source) + ("dataset",)
    text = str(source)
    if text == "mnist":
        images, labels = load_mnist_arrays()
        return images, labels.astype(np.int64), "mnist"
    path = Path(text)
    if path.suffix == ".npz":
        return load_npz(path) + (str(path),)
    if path.is_dir():
        return load_folder(path) + (str(path),)
    if not path.exists():
        raise BadInputError(f"data set not found: {text} (use 'mnist', a .npz file or an image folder)")
    raise BadInputError(f"unsupported data set {text}: use 'mnist', a .npz file or an image folder")


def _from_dataset(ds: Dataset) -> Tuple[np.ndarray, np.ndarray]:
    if len(ds) == 0:
        raise BadInputError("the data set is empty")
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    try:
        x = np.stack([np.asarray(v, dtype=np.float32) for v in xs])
        y = np.asarray([int(v) for v in ys], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"data set items must be (image, label) pairs of equal shape: {exc}") from None
    if not np.isfinite(x).all():  # a Dataset may be normalized, so only NaN/inf are refused
        raise BadInputError("the data set has NaN or infinite pixel values")
    return x, y


def calibration_batches(data: LabeledData, n: int = 256, batch_size: int = 32) -> Iterator[np.ndarray]:
    """The first n images as NCHW float32 numpy batches (for quantization and importance)."""
    x = data.x[:n].numpy()
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


__all__ = ["LabeledData", "SPLITS", "calibration_batches", "load_dataset"]
