"""The built-in MNIST split and the user-data loaders, with their bad-input errors."""
import numpy as np
import pytest
import torch

from edgeprune.data import calibration_batches, load_dataset
from edgeprune.data.mnist import mnist_split_indices
from edgeprune.errors import BadInputError


def test_builtin_split_is_fixed_and_stratified():
    sizes = {s: len(load_dataset("mnist", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 8000, "val": 1000, "test": 1000}
    idx = mnist_split_indices()
    assert not set(idx["train"]) & set(idx["test"]) and not set(idx["val"]) & set(idx["test"])
    counts = np.bincount(load_dataset("mnist", "test").y.numpy())
    assert counts.min() >= 89 and counts.max() <= 114  # each class ~10%, as in the full set
    # The split must never change between releases: a fingerprint of the test indices.
    assert int(idx["test"].sum()) == 5034747


def test_builtin_mnist_is_real_digits(mnist_test):
    assert mnist_test.x.shape == (1000, 1, 28, 28)
    assert 0.0 <= float(mnist_test.x.min()) and float(mnist_test.x.max()) == 1.0
    assert 0.10 < float(mnist_test.x.mean()) < 0.16  # MNIST's mean intensity is 0.13


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (1, 32), (3, 28)])
def test_channels_and_size(channels, size):
    d = load_dataset("mnist", "val", channels=channels, size=size)
    assert d.input_shape == (channels, size, size) and d.num_classes == 10


def test_npz_loader_and_split(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (200, 16, 16, 3), dtype=np.uint8)
    y = np.repeat(np.arange(4), 50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    parts = {s: load_dataset(tmp_path / "d.npz", s) for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [160, 20, 20]
    assert parts["test"].input_shape == (3, 16, 16) and parts["test"].num_classes == 4
    gray = load_dataset(tmp_path / "d.npz", "test", channels=1, size=28)
    assert gray.input_shape == (1, 28, 28)


def test_image_folder_loader(tmp_path):
    from PIL import Image
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(10):
            Image.fromarray(np.full((12, 12, 3), 20 * i, dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    d = load_dataset(tmp_path, "train", channels=3)
    assert d.num_classes == 2 and d.input_shape == (3, 12, 12) and len(d) == 16


def test_torch_dataset_source():
    ds = torch.utils.data.TensorDataset(torch.rand(30, 1, 8, 8), torch.arange(30) % 3)
    d = load_dataset(ds, "test", size=28)
    assert len(d) == 30 and d.input_shape == (1, 28, 28) and d.num_classes == 3


def test_calibration_batches(mnist_test):
    batches = list(calibration_batches(mnist_test, n=100, batch_size=32))
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    assert batches[0].dtype == np.float32 and batches[0].shape[1:] == (1, 28, 28)


def test_bad_data_errors(tmp_path):
    np.savez(tmp_path / "noy.npz", x=np.zeros((5, 8, 8)))
    np.savez(tmp_path / "shape.npz", x=np.zeros((5, 8)), y=np.zeros(5, dtype=int))
    np.savez(tmp_path / "count.npz", x=np.zeros((5, 8, 8)), y=np.zeros(4, dtype=int))
    np.savez(tmp_path / "range.npz", x=np.zeros((10, 8, 8)), y=np.arange(10))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a").mkdir()
    cases = [
        (tmp_path / "noy.npz", {}, "must hold arrays 'x' and 'y'"),
        (tmp_path / "shape.npz", {}, "x must be"),
        (tmp_path / "count.npz", {}, "one label per image"),
        (tmp_path / "range.npz", {"num_classes": 5}, "label 9 out of range for 5 classes"),
        (tmp_path / "empty", {}, "has no images"),
        (tmp_path / "missing.npz", {}, "not found"),
        ("mnist", {"channels": 2}, "channels must be 1 or 3"),
    ]
    for source, kwargs, message in cases:
        with pytest.raises(BadInputError, match=message):
            load_dataset(source, "test", **kwargs)
    with pytest.raises(BadInputError, match="unknown split"):
        load_dataset("mnist", "holdout")
