"""User data is checked before it can train or verify anything: pixel range and dtype,
NaN/inf, labels 0..K-1, enough samples per class for the 80/10/10 split."""
import numpy as np
import pytest

from edgeprune.data import load_dataset
from edgeprune.errors import BadInputError

RNG = np.random.RandomState(0)
LABELS = np.repeat(np.arange(4), 20)


def _images(dtype=np.uint8, high=256):
    return RNG.randint(0, high, (len(LABELS), 8, 8)).astype(dtype)


@pytest.mark.parametrize("x, y, message", [
    (_images(np.float64, 17), LABELS, r"float64 with values 0 to 16, .*0-1.*divide by 16"),
    (_images(np.float32), LABELS, r"values 0 to 255.*divide by 255"),
    (RNG.randn(len(LABELS), 8, 8).astype(np.float32), LABELS, "look normalized"),
    (np.full((len(LABELS), 8, 8), np.nan, np.float32), LABELS, "NaN or infinite"),
    (np.where(_images(np.float32, 2) > 0, np.inf, 0.5).astype(np.float32), LABELS, "NaN or infinite"),
    (_images(np.int64), LABELS, r"int64 .*x.astype\(np.uint8\)"),
    (_images(np.int32, 17), LABELS, "divide by 16"),
    (_images(), LABELS - 1, "negative label"),
    (_images(), np.where(LABELS == 2, 3, LABELS), "no sample of label 2 .*without gaps"),
    (_images(), np.zeros_like(LABELS), "one class only"),
    (_images(), np.r_[np.zeros(75, int), np.ones(5, int)], "class 1 has 5 samples.*at least 10"),
    (_images(), LABELS.astype(np.float32), "labels y must be integers"),
])
def test_bad_npz_is_refused_with_one_line(tmp_path, x, y, message):
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(BadInputError, match=message) as info:
        load_dataset(tmp_path / "d.npz", "train")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("x", [_images(), _images(np.float32, 2) * 0.5, RNG.rand(len(LABELS), 8, 8)])
def test_good_npz_is_accepted(tmp_path, x):
    np.savez(tmp_path / "d.npz", x=x, y=LABELS)
    data = load_dataset(tmp_path / "d.npz", "test")
    assert data.num_classes == 4 and 0 <= float(data.x.min()) and float(data.x.max()) <= 1


def _folder(root, counts):
    from PIL import Image
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((6, 6, 3), 10 * i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_image_folder_checks(tmp_path):
    with pytest.raises(BadInputError, match="class folder 'b' has no images"):
        load_dataset(_folder(tmp_path / "gap", {"a": 10, "b": 0, "c": 10}), "train")
    with pytest.raises(BadInputError, match="one class only"):
        load_dataset(_folder(tmp_path / "one", {"a": 10}), "train")
    with pytest.raises(BadInputError, match="class 1 has 3 samples"):
        load_dataset(_folder(tmp_path / "few", {"a": 10, "b": 3}), "train")


def test_digits_like_data_is_refused_by_the_cli(tmp_path):
    from tests.cli.conftest import assert_one_error_line, run_module

    np.savez(tmp_path / "digits.npz", x=_images(np.float64, 17), y=LABELS)
    out = run_module("train", "--arch", "resnet20", "--data", tmp_path / "digits.npz", "--out", tmp_path / "m.pt")
    assert out.returncode == 2 and not (tmp_path / "m.pt").exists()
    assert_one_error_line(out.stderr, "digits.npz", "0 to 16", "divide by 16")
