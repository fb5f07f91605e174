"""pytest fixtures shared by tests/device_agents, tests/targets and tests/faults (imported by their conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.agent_kit import testing
from edgeprune.targets.target import Target

# workdirs with spaces and shell metacharacters: every remote command must quote them
ODD_DIR = "edge prune $(touch pwned);'q\" `x`"


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Cache and emulator state in a temporary directory, never the user's."""
    base = tmp_path_factory.mktemp("edgeprune-state")
    saved = {k: os.environ.get(k) for k in ("EDGEPRUNE_CACHE_DIR", "EDGEPRUNE_STATE_DIR")}
    os.environ["EDGEPRUNE_CACHE_DIR"] = str(base / "cache")
    os.environ["EDGEPRUNE_STATE_DIR"] = str(base / "state")
    yield base
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ONNX (NCHW) and TFLite (NHWC, fp32 and int8) CNN, a corrupt file, and a memory hog."""
    d = tmp_path_factory.mktemp("artifacts")
    corrupt = d / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    return {"onnx": testing.tiny_onnx(d / "tiny.onnx"), "tflite": testing.tiny_tflite(d / "tiny.tflite"),
            "tflite_int8": testing.tiny_tflite(d / "tiny-int8.tflite", int8=True),
            "corrupt": corrupt, "hog": testing.memory_hog_onnx(d / "hog.onnx", megabytes=600)}


def _emulated(kind: str, **extra: object) -> Target:
    fields = {"name": f"t-emu-{kind}-{os.getpid()}", "transport": kind, "workdir": ODD_DIR,
              "emulation": {"cpu_fraction": 1.0, "memory_mb": 1024, "threads": 1}}
    if kind == "adb":
        fields["python"] = "python3"
    fields.update(extra)
    return testing.quick_target(**fields)


@pytest.fixture(scope="session")
def ssh_target() -> Iterator[Target]:
    """An emulated target behind a real sshd on 127.0.0.1 (torn down after the session)."""
    testing.require_emulation()
    with testing.emulated(_emulated("ssh")) as target:
        yield target


@pytest.fixture(scope="session")
def adb_target() -> Iterator[Target]:
    """An emulated target behind the adb stand-in, reached by the real adb client."""
    testing.require_emulation()
    with testing.emulated(_emulated("adb")) as target:
        yield target


@pytest.fixture(scope="session")
def local_target(tmp_path_factory: pytest.TempPathFactory) -> Target:
    """The reference: the agent as a local subprocess (workdir with odd characters)."""
    return testing.quick_target(name="t-local", transport="local",
                                workdir=str(tmp_path_factory.mktemp("local") / ODD_DIR))


@pytest.fixture(params=["local", "ssh", "adb"])
def any_target(request: pytest.FixtureRequest) -> Target:
    """The same checks over every transport."""
    return request.getfixturevalue(f"{request.param}_target")
