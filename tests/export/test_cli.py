"""The export and verify verbs through the real console script: JSON, exit codes, no partial files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from edgeprune.models import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(zoo, tmp_path_factory):
    ckpt = zoo.get("resnet20", pruned=True)
    path = tmp_path_factory.mktemp("cli") / "resnet20.pt"
    save_checkpoint(path, ckpt.model, "resnet20", {}, ckpt.metadata)
    return path


def _unshare_prefix():
    """`unshare -n` (no network namespace) when we may; None otherwise."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return None
    ok = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    return ["unshare", "-n"] if ok else None


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_export_then_verify_json(cli, checkpoint, tmp_path, fmt):
    out = tmp_path / f"m.{fmt}"
    res = cli("export", str(checkpoint), "--format", fmt, "--precision", "int8", "--data", "mnist",
              "--calibration-samples", "32", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["precision"] == "int8"
    res = cli("verify", str(out), "--reference", str(checkpoint), "--samples", "100", "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["passed"] and d["target"] is None and d["samples"] == 100 and d["precision"] == "int8"


def test_export_tflite_without_network(checkpoint, tmp_path):
    prefix = _unshare_prefix()
    if prefix is None:
        pytest.skip("needs root and unshare to drop the network")
    exe = os.path.join(os.path.dirname(os.sys.executable), "edgeprune")
    out = tmp_path / "m.tflite"
    res = subprocess.run([*prefix, exe, "export", str(checkpoint), "--format", "tflite", "--precision",
                          "int8", "--calibration-samples", "16", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 0


def test_verify_failure_exits_1(cli, checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    assert cli("export", str(checkpoint), "--out", str(out)).returncode == 0
    res = cli("verify", str(out), "--reference", str(checkpoint), "--samples", "20",
              "--min-agreement", "1.5", "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["passed"] is False


def test_bad_inputs_exit_2_with_one_line(cli, checkpoint, tmp_path):
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"not a model")
    res = cli("verify", str(corrupt), "--reference", str(checkpoint), "--samples", "5")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr
    out = tmp_path / "x.onnx"
    res = cli("export", str(checkpoint), "--precision", "int8", "--data", str(tmp_path / "none.npz"),
              "--out", str(out))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert not out.exists() and not any(p.name.endswith(".part.onnx") for p in tmp_path.iterdir())


def test_format_mismatch(cli, checkpoint, tmp_path):
    res = cli("export", str(checkpoint), "--format", "tflite", "--out", str(tmp_path / "m.onnx"))
    assert res.returncode == 2 and "does not match --format" in res.stderr
