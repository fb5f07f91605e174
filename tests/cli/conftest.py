"""Run `python -m edgeprune.cli` as users do, with tests/cli/custom_models.py importable."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

FACTORY = "tests.cli.custom_models"


def run_module(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """`python -m edgeprune.cli ARGS`; returns the CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO)}
    full_env.pop("EDGEPRUNE_DEBUG", None)  # a developer's setting must not change what we test
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "edgeprune.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=timeout)


def one_json_object(stdout: str) -> dict:
    """The whole of stdout parsed as exactly one JSON object (raises otherwise)."""
    obj, end = json.JSONDecoder().raw_decode(stdout.strip())
    assert stdout.strip()[end:].strip() == "", f"more than one object on stdout: {stdout!r}"
    assert isinstance(obj, dict)
    return obj


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    """stderr is one `edgeprune: error:` line (plus plain progress lines), no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("edgeprune: error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], stderr
    return errors[0]


@pytest.fixture(scope="session")
def rgb_npz(tmp_path_factory) -> Path:
    """A 3 x 16 x 16 two-class data set a tiny CNN learns in one epoch (red or not)."""
    rng = np.random.RandomState(0)
    y = np.arange(300) % 2
    x = rng.randint(0, 60, (300, 16, 16, 3)).astype(np.uint8)
    x[y == 1, :, :, 0] += 150
    path = tmp_path_factory.mktemp("rgb") / "rgb.npz"
    np.savez(path, x=x, y=y)
    return path
