"""Shared fixtures: small models and data that build in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


# torch threads per test: 2, or OMP_NUM_THREADS where set (tests/lanes.py sets 1 when two
# pytest units share the 2 cores: two threads each spin against the other unit's)
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 2)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)
    yield


@pytest.fixture
def one_thread():
    """For tiny nets: a second thread buys nothing and stalls when the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist_test():
    from edgeprune.data import load_dataset
    return load_dataset("mnist", "test")


@pytest.fixture(scope="session")
def mnist_train():
    from edgeprune.data import load_dataset
    return load_dataset("mnist", "train")


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 1200, env: dict | None = None):
    """Run the real `edgeprune` console script; returns the CompletedProcess."""
    exe = Path(sys.executable).with_name("edgeprune")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=full_env)


@pytest.fixture
def cli():
    return run_cli
