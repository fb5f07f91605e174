"""Shared fixtures: real runtimes, a real sshd and the adb stand-in on 127.0.0.1 (see device_agents/_pytest_fixtures.py)."""
from device_agents._pytest_fixtures import (  # noqa: F401
    adb_target, any_target, artifacts, isolated_state, local_target, ssh_target,
)
