"""The fault matrix (tests/agent_kit/faults.py), one test per row, against a real sshd, the adb
stand-in and a real agent. Emulated targets need root: they fail, not skip, when CI=true."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from edgeprune.targets.target import Target
from tests.agent_kit import faults, testing
from tests.agent_kit.fixtures import artifacts, isolated_state  # noqa: F401


@pytest.fixture(scope="session")
def faults_ssh() -> Iterator[Target]:
    """An emulated ssh target of the fault tests' own (its workdir marks its processes)."""
    testing.require_emulation()
    with faults.emulated(faults.ssh_target("ssh")) as target:
        yield target


@pytest.fixture(scope="session")
def faults_adb() -> Iterator[Target]:
    testing.require_emulation()
    with faults.emulated(faults.adb_target()) as target:
        yield target


@pytest.fixture(scope="session")
def faults_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("faults-local")
    yield faults.local_target(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path
