"""Rows: SSH as OpenSSH does it (one connect timeout, host keys, known_hosts)."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest

from edgeprune.errors import TargetUnreachableError
from tests.agent_kit import faults, testing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host():
    t = testing.quick_target(name="t-nohost", transport="ssh", host="127.0.0.1", port=_free_port(), retries=1)
    start = time.monotonic()
    with pytest.raises(TargetUnreachableError, match="cannot reach 127.0.0.1"):
        t.check()
    assert time.monotonic() - start < 10


def test_bannerless_port_fails_after_one_connect_timeout(folder):
    out = faults.bannerless_port(folder, timeout=2.0)
    assert out.passed, (out.row(), out.details)
    assert "sent no SSH banner" in str(out.error) and "\n" not in str(out.error)
    assert out.details["cli_stderr"][0].startswith("edgeprune: error:")


def test_wrong_key_is_refused(faults_ssh, folder):
    other = folder / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(TargetUnreachableError, match="refused the key"):
        faults.plain_ssh(faults_ssh, key=str(other)).check()


def test_unknown_host_key_refused_unless_tofu(faults_ssh, folder):
    kh = folder / "known_hosts"
    with pytest.raises(TargetUnreachableError, match="not in .*known_hosts.*trust_on_first_use"):
        faults.plain_ssh(faults_ssh, known_hosts=str(kh)).check()
    assert not kh.exists()
    assert faults.plain_ssh(faults_ssh, known_hosts=str(kh), trust_on_first_use=True).check()["reachable"]
    assert kh.read_text().startswith("[127.0.0.1]:")


def test_changed_host_key_is_refused_and_not_retried(faults_ssh, folder):
    out = faults.changed_host_key(faults_ssh, folder)
    assert out.passed, out.row()


def test_unparsable_known_hosts_lines_are_skipped_with_a_warning(faults_ssh, folder):
    out = faults.unparsable_known_hosts(faults_ssh, folder)
    assert out.passed, (out.row(), out.details)
    warnings = [w for w in out.details["cli_stderr"] if "known_hosts_bad line" in w]
    assert len(warnings) == 4 and all(w.startswith("edgeprune: ") for w in warnings)


def test_trust_on_first_use_appends_and_keeps_comments(faults_ssh, folder):
    out = faults.tofu_appends(faults_ssh, folder)
    assert out.passed, (out.row(), out.details)
