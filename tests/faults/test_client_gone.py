"""Rows: the client goes away mid-bench (Ctrl-C, killed): the agent ends its bench process and exits."""
from __future__ import annotations

import pytest

from tests.agent_kit import faults


@pytest.mark.parametrize("transport", ["local", "ssh", "adb"])
def test_ctrl_c_ends_agent_and_bench(transport, request, artifacts, folder):
    target = request.getfixturevalue(f"faults_{transport}")
    out = faults.client_gone(target, artifacts["onnx"], folder, "sigint")
    assert out.passed, (out.row(), out.details)


def test_killed_client_ends_agent_and_bench(faults_ssh, artifacts, folder):
    out = faults.client_gone(faults_ssh, artifacts["onnx"], folder, "sigkill")
    assert out.passed, (out.row(), out.details)
