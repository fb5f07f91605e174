"""Verification numbers, failure modes and one-line errors for bad artifacts and data."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from edgeprune.errors import BadInputError, TargetUnreachableError
from edgeprune.export import ExportConfig, export, load_runner, sqnr_db, verify

CONTRACT = {"artifact", "target", "samples", "max_abs_diff", "top1_agreement", "accuracy",
            "reference_accuracy", "passed"}


@pytest.fixture(scope="module")
def fp32_onnx(zoo, tmp_path_factory):
    ckpt = zoo.get("resnet20")
    return ckpt, export(ckpt, ExportConfig(), tmp_path_factory.mktemp("v") / "m.onnx")


def test_result_fields(fp32_onnx, mnist_test):
    ckpt, path = fp32_onnx
    d = verify(path, ckpt, mnist_test, samples=50).to_dict()
    assert CONTRACT | {"sqnr_db", "precision"} <= set(d)
    assert d["target"] is None and d["samples"] == 50 and d["precision"] == "fp32"
    assert d["top1_agreement"] == 1.0 and d["passed"] and d["max_abs_diff"] < 1e-3
    assert d["accuracy"] == pytest.approx(d["reference_accuracy"])


def test_threshold_can_be_raised_to_fail(fp32_onnx, mnist_test):
    ckpt, path = fp32_onnx
    assert not verify(path, ckpt, mnist_test, samples=20, thresholds={"fp32": 1.01}).passed


def test_sqnr():
    ref = np.array([[3.0, 4.0]])
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)


def test_agreement_forgives_only_ties():
    from edgeprune.export._common import top1_agreement

    ref = np.array([[5.0, 5.0 - 1e-6, 0.0], [5.0, 4.0, 0.0], [1.0, 3.0, 2.0]])
    flipped_tie = np.array([[4.9, 5.1, 0.0], [5.0, 4.0, 0.0], [1.0, 3.0, 2.0]])
    assert top1_agreement(ref, flipped_tie) == 1.0  # a tie broken the other way agrees
    flipped = np.array([[5.0, 4.0, 0.0], [4.0, 5.0, 0.0], [1.0, 3.0, 2.0]])
    assert top1_agreement(ref, flipped) == pytest.approx(2 / 3)  # a 1.0-wide margin is no tie
    assert top1_agreement(ref, -ref) == pytest.approx(0.0)


def test_runner_rejects_wrong_input_shape(fp32_onnx):
    with pytest.raises(BadInputError, match=r"does not fit the artifact's input \[1, 1, 28, 28\]"):
        load_runner(fp32_onnx[1]).run(np.zeros((2, 3, 32, 32), np.float32))


def test_runner_splits_batches(fp32_onnx, mnist_test):
    out = load_runner(fp32_onnx[1]).run(mnist_test.x[:5].numpy())
    assert out.shape == (5, 10)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_truncated_artifact_is_one_line_error(fp32_onnx, mnist_test, tmp_path, suffix):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(fp32_onnx[1].read_bytes()[:1000])
    with pytest.raises(BadInputError) as info:
        verify(bad, fp32_onnx[0], mnist_test, samples=5)
    assert "\n" not in str(info.value) and bad.name in str(info.value)


def test_data_of_wrong_shape(fp32_onnx):
    with pytest.raises(BadInputError, match=r"data of shape \[4, 3, 32, 32\] does not match"):
        verify(fp32_onnx[1], fp32_onnx[0], np.zeros((4, 3, 32, 32), np.float32))


def test_calibration_data_of_wrong_shape(zoo, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(BadInputError, match="does not match the model input"):
        export(zoo.get("resnet20"), ExportConfig(precision="int8"), out, data=np.zeros((8, 1, 32, 32)))
    assert list(tmp_path.iterdir()) == []


def test_unsupported_op_is_bad_input(tmp_path):
    import torch

    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x.flatten(1)[:, :4].reshape(-1, 2, 2)).S.flatten(1)

    with pytest.raises(BadInputError, match="cannot export to ONNX"):
        export(Odd(), ExportConfig(input_shape=(1, 2, 2)), tmp_path / "odd.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_target_module_is_target_error(fp32_onnx, mnist_test, monkeypatch):
    monkeypatch.setitem(sys.modules, "edgeprune.targets", None)
    with pytest.raises(TargetUnreachableError):
        verify(fp32_onnx[1], fp32_onnx[0], mnist_test, target="rpi4", samples=5)


def test_import_export_is_light():
    import subprocess

    code = "import sys, edgeprune.export; print('tensorflow' in sys.modules, 'onnx2tf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
