"""The Python examples run as a user would run them, and succeed."""
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_custom_model_example(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "examples" / "custom_model.py"), "--out", str(tmp_path),
                          "--epochs", "2", "--samples", "3000"], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    for name in ("trained.pt", "pruned.pt", "pruned-fp32.onnx", "pruned-int8.onnx", "pruned-fp32.tflite",
                 "pruned-int8.tflite"):
        assert (tmp_path / name).exists(), name
    assert res.stdout.count(" passed") == 4, res.stdout
    assert "[device" in res.stdout or "device," in res.stdout, res.stdout  # measured, with provenance
