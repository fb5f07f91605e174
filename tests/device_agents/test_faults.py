"""Faults and bad input: each ends in one readable project error, never a hang or a paramiko traceback."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from device_agents import testing
from device_agents.client import AgentClient, AgentOptions, ProtocolMismatchError
from device_agents.local import LocalTransport
from edgeprune.errors import DoesNotFitError, TargetUnreachableError
from edgeprune.targets import emulate
from edgeprune.targets.cache import MeasurementCache


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_ssh(target, **extra):
    """A non-emulated ssh profile pointing at the emulated sshd, to vary keys and known_hosts."""
    st = emulate.status(target.name)
    fields = {"name": "t-plain", "transport": "ssh", "host": "127.0.0.1", "port": st["port"], "user": st["user"],
              "key": st["key"], "known_hosts": st["known_hosts"], "python": st["python"], "workdir": target.workdir}
    fields.update(extra)
    return testing.quick_target(**fields)


def test_unreachable_host():
    t = testing.quick_target(name="t-nohost", transport="ssh", host="127.0.0.1", port=_free_port(), retries=1)
    start = time.monotonic()
    with pytest.raises(TargetUnreachableError, match="cannot reach 127.0.0.1"):
        t.check()
    assert time.monotonic() - start < 10


def test_wrong_key_is_refused(ssh_target, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(TargetUnreachableError, match="refused the key"):
        _plain_ssh(ssh_target, key=str(other)).check()


def test_unknown_host_key_refused_unless_tofu(ssh_target, tmp_path):
    kh = tmp_path / "known_hosts"
    with pytest.raises(TargetUnreachableError, match="not in .*known_hosts.*trust_on_first_use"):
        _plain_ssh(ssh_target, known_hosts=str(kh)).check()
    assert _plain_ssh(ssh_target, known_hosts=str(kh), trust_on_first_use=True).check()["ok"]
    assert "127.0.0.1" in kh.read_text()


def test_changed_host_key_refused(ssh_target, tmp_path):
    other = tmp_path / "hk"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    port = emulate.status(ssh_target.name)["port"]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{port} " + " ".join(other.with_suffix(".pub").read_text().split()[:2]) + "\n")
    with pytest.raises(TargetUnreachableError, match="does not match"):
        _plain_ssh(ssh_target, known_hosts=str(kh)).check()


def test_protocol_mismatch(tmp_path):
    client = AgentClient(LocalTransport("t-proto", workdir=str(tmp_path)), AgentOptions(python=[os.sys.executable],
                                                                                       protocol=99))
    with pytest.raises(ProtocolMismatchError, match="protocol 99"):
        client.open()
    client.shutdown()


def _kill_soon(pids_fn, delay):
    def go():
        time.sleep(delay)
        for pid in pids_fn():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    threading.Thread(target=go, daemon=True).start()


def _agent_pids(workdir):
    """Pids of agents (not bench children) whose --cache lies under workdir, from /proc."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--cache" in argv and any(workdir.encode() in a for a in argv):
            found.append(int(cmdline.parent.name))
    return found


@pytest.mark.slow
def test_agent_killed_mid_bench_is_retried(local_target, artifacts):
    t = dataclasses.replace(local_target, name="t-killed", min_seconds=2.0)
    _kill_soon(lambda: _agent_pids(str(t.workdir)), 1.0)
    m = t.measure(artifacts["onnx"], use_cache=False)
    assert m.runs >= 10


def test_agent_killed_without_retries_is_a_clean_error(local_target, artifacts):
    t = dataclasses.replace(local_target, name="t-killed0", min_seconds=3.0, retries=0)
    before = MeasurementCache().count(_sha(artifacts["onnx"]))
    _kill_soon(lambda: _agent_pids(str(t.workdir)), 1.0)
    with pytest.raises(TargetUnreachableError, match="failed after 1 attempt.*agent exited"):
        t.measure(artifacts["onnx"])
    assert MeasurementCache().count(_sha(artifacts["onnx"])) == before


@pytest.mark.slow
def test_sshd_killed_mid_bench_leaves_no_cache_entry(artifacts):
    testing.require_emulation()
    t = testing.quick_target(name=f"t-doomed-{os.getpid()}", transport="ssh", min_seconds=3.0, retries=2,
                             emulation={"cpu_fraction": 1.0, "memory_mb": 1024})
    cache = MeasurementCache()
    with testing.emulated(t):
        pid = emulate.status(t.name)["pid"]
        _kill_soon(lambda: [pid] + emulate._descendants(pid), 1.5)
        start = time.monotonic()
        with pytest.raises(TargetUnreachableError, match="failed after 3 attempt") as info:
            t.measure(artifacts["tflite"])
        assert time.monotonic() - start < 30
        assert "\n" not in str(info.value) and isinstance(info.value.__cause__, TargetUnreachableError)
    assert cache.count(_sha(artifacts["tflite"])) == 0


def _sha(path):
    """sha256 of a file."""
    from edgeprune._io import sha256_file
    return sha256_file(path)


@pytest.mark.slow
def test_model_over_memory_limit_does_not_fit(artifacts):
    testing.require_emulation()
    t = testing.quick_target(name=f"t-small-{os.getpid()}", transport="ssh", bench_timeout=60,
                             emulation={"cpu_fraction": 1.0, "memory_mb": 300})
    with testing.emulated(t):
        start = time.monotonic()
        with pytest.raises(DoesNotFitError, match="does not fit \\(out of memory\\)"):
            t.measure(artifacts["hog"])
        assert time.monotonic() - start < 60
        assert t.check()["device"]["memory_mb"] == pytest.approx(300)
    assert MeasurementCache().count(_sha(artifacts["hog"])) == 0


def test_emulate_down_leaves_nothing_running(artifacts):
    testing.require_emulation()
    t = testing.quick_target(name=f"t-updown-{os.getpid()}", transport="adb", python="python3",
                             emulation={"cpu_fraction": 0.5, "memory_mb": 512})
    with testing.emulated(t):
        state = emulate.status(t.name)
        assert state["running"] and state["cfs"] == [2000, 4000]
        t.measure(artifacts["tflite"], use_cache=False)
        cg = state["cgroups"]
    assert not emulate.status(t.name)["running"]
    assert not any(os.path.exists(d) for d in cg)
    assert not emulate._alive(state["pid"])
