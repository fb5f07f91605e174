"""Shared fixtures: real runtimes, a real sshd and the adb stand-in on 127.0.0.1 (see tests/agent_kit/fixtures.py)."""
from tests.agent_kit.fixtures import (  # noqa: F401
    adb_target, any_target, artifacts, isolated_state, local_target, ssh_target,
)
