"""The export and verify verbs through the real console script: JSON, exit codes, no partial
files, and the done-when sequence with networking unavailable (`unshare -n`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgeprune.models import save_checkpoint
from tests.export.conftest import offline_prefix

EXE = str(Path(sys.executable).with_name("edgeprune"))


@pytest.fixture(scope="module")
def checkpoint(zoo, tmp_path_factory):
    ckpt = zoo.get("resnet20", pruned=True)
    path = tmp_path_factory.mktemp("cli") / "resnet20.pt"
    save_checkpoint(path, ckpt.model, "resnet20", {}, ckpt.metadata)
    return path


def _error_lines(stderr: str):
    """The error lines of a failed run; progress lines before them are allowed."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("edgeprune: error:")]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_done_when_offline_export_then_verify(checkpoint, tmp_path, fmt):
    """`export --precision int8 --data mnist` then `verify --json`, both with no network."""
    import subprocess

    prefix = offline_prefix()
    out = tmp_path / f"p.{fmt}"
    run = lambda *a: subprocess.run([*prefix, EXE, *a], capture_output=True, text=True, timeout=600)  # noqa: E731
    res = run("export", str(checkpoint), "--format", fmt, "--precision", "int8", "--data", "mnist",
              "--calibration-samples", "64", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    # int8 with the first and the last layer kept in float (float_sensitive, the default)
    assert d["precision"] == "mixed" and d["model_bytes"] == out.stat().st_size
    assert len(d["float_layers"]) == 2, d["float_layers"]
    noise = [line for line in res.stderr.splitlines() if not line.startswith("exporting ")]
    assert noise == [], res.stderr  # TensorFlow's start-up and converter logs stay off the terminal
    res = run("verify", str(out), "--reference", str(checkpoint), "--data", "mnist", "--samples", "200",
              "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["passed"] is True and d["top1_agreement"] >= 0.98, d
    assert d["target"] is None and d["samples"] == 200 and d["precision"] == "mixed"
    assert len(d["float_layers"]) == 2, d["float_layers"]
    assert {"max_abs_diff", "accuracy", "reference_accuracy", "artifact"} <= set(d)


def test_verify_failure_exits_1(cli, checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    assert cli("export", str(checkpoint), "--out", str(out)).returncode == 0
    res = cli("verify", str(out), "--reference", str(checkpoint), "--samples", "20",
              "--min-agreement", "1.5", "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["passed"] is False


def test_corrupt_artifact_is_one_line_exit_2(cli, checkpoint, tmp_path):
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"not a model")
    res = cli("verify", str(corrupt), "--reference", str(checkpoint), "--samples", "5", "--json")
    assert res.returncode == 2
    # --json prints exactly one object, an error object on failure
    assert json.loads(res.stdout)["error"]["type"] == "BadInputError"
    errors = _error_lines(res.stderr)
    assert len(errors) == 1 and "bad.onnx is not a valid ONNX model" in errors[0]


@pytest.mark.parametrize("data, message", [
    ("{tmp}/none.npz", "none.npz"),
    ("{tmp}/wrong.npz", "does not match the model input"),
])
def test_bad_calibration_data_is_exit_2_and_no_partial_file(cli, checkpoint, tmp_path, data, message):
    import numpy as np

    np.savez(tmp_path / "wrong.npz", x=np.zeros((20, 1, 20, 28), np.float32), y=np.arange(20) % 2)
    out = tmp_path / "x.onnx"
    res = cli("export", str(checkpoint), "--precision", "int8", "--data", data.format(tmp=tmp_path),
              "--out", str(out))
    errors = _error_lines(res.stderr)
    assert res.returncode == 2 and len(errors) == 1 and message in errors[0], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.npz"]


def test_format_mismatch(cli, checkpoint, tmp_path):
    res = cli("export", str(checkpoint), "--format", "tflite", "--out", str(tmp_path / "m.onnx"))
    assert res.returncode == 2 and "does not match --format" in res.stderr
