"""The agent's wire protocol, spoken directly over its stdin/stdout."""
from __future__ import annotations

import ast
import base64
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "device_agents" / "agent.py"


@pytest.fixture
def agent(tmp_path):
    proc = subprocess.Popen([sys.executable, str(AGENT), "--cache", str(tmp_path / "c c"), "--idle-timeout", "30"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def ask(obj):
        proc.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())
    ask.proc = proc
    yield ask
    proc.kill()
    proc.wait()


def test_agent_is_python38_syntax():
    ast.parse(AGENT.read_text(), feature_version=(3, 8))


def test_hello_fields(agent):
    reply = agent({"id": 1, "op": "hello", "protocol": 1})
    assert reply["ok"] and reply["id"] == 1 and reply["protocol"] == 1
    for key in ("runtimes", "python", "cpu", "cores", "memory_mb", "hostname"):
        assert key in reply
    assert "onnxruntime" in reply["runtimes"]


def test_protocol_mismatch_is_an_error(agent):
    reply = agent({"id": 2, "op": "hello", "protocol": 99})
    assert not reply["ok"] and reply["error"]["type"] == "ProtocolMismatch"
    assert "protocol 99" in reply["error"]["message"]


@pytest.mark.parametrize("request_line, kind", [("not json", "BadRequest"), ('{"id": 3, "op": "dance"}', "BadRequest"),
                                                ('{"id": 4, "op": "bench", "sha256": "zz"}', "BadRequest"),
                                                ('{"id": 5, "op": "bench", "sha256": "' + "a" * 64 + '", "ext": ".onnx"}',
                                                 "NotFound")])
def test_errors_come_back_as_json(agent, request_line, kind):
    reply = agent(request_line)
    assert reply["ok"] is False and reply["error"]["type"] == kind


def test_put_inline_and_checksum(agent):
    data = b"hello model"
    sha = hashlib.sha256(data).hexdigest()
    assert agent({"id": 1, "op": "put", "sha256": sha, "ext": ".bin"})["present"] is False
    reply = agent({"id": 2, "op": "put", "sha256": sha, "ext": ".bin", "data_b64": base64.b64encode(data).decode()})
    assert reply["present"] and reply["bytes"] == len(data)
    bad = agent({"id": 3, "op": "put", "sha256": "b" * 64, "ext": ".bin", "data_b64": base64.b64encode(data).decode()})
    assert bad["error"]["type"] == "ChecksumMismatch"


def test_bye_and_eof_end_the_agent(agent):
    assert agent({"id": 9, "op": "bye"})["ok"]
    assert agent.proc.wait(timeout=5) == 0


def test_idle_timeout_ends_the_agent(tmp_path):
    proc = subprocess.Popen([sys.executable, str(AGENT), "--cache", str(tmp_path), "--idle-timeout", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    start = time.monotonic()
    assert proc.wait(timeout=10) == 0 and time.monotonic() - start < 8
    proc.stdin.close()
    proc.stdout.close()


def _bench_children(agent_pid):
    """Pids of bench processes whose parent is agent_pid."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == agent_pid and b"--bench-child" in argv:
            found.append(int(stat.parent.name))
    return found


def test_prewarmed_bench_process_is_used_once_and_cleaned_up(tmp_path):
    proc = subprocess.Popen([sys.executable, str(AGENT), "--cache", str(tmp_path), "--prewarm", "onnxruntime"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _bench_children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        first = _bench_children(proc.pid)
        assert len(first) == 1  # started with the agent, before any request
        sys.path.insert(0, str(AGENT.parent.parent))
        from device_agents.testing import tiny_onnx
        model = tiny_onnx(tmp_path / "m.onnx")
        sha = hashlib.sha256(model.read_bytes()).hexdigest()
        (tmp_path / f"{sha}.onnx").write_bytes(model.read_bytes())
        ask = {"id": 1, "op": "bench", "sha256": sha, "ext": ".onnx", "runs": 5, "min_seconds": 0.05,
               "warmup_seconds": 0.01}
        proc.stdin.write(json.dumps(ask).encode() + b"\n")
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        assert reply["ok"] and len(reply["times_s"]) >= 5 and reply["peak_memory_mb"] >= 0
        assert reply["agent_s"]["wait_for_child"] < 5.0
        again = _bench_children(proc.pid)
        assert len(again) == 1 and again != first  # a fresh process for the next model
        proc.stdin.write(b'{"id": 2, "op": "bye"}\n')
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
        assert not any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                       for pid in again)
    finally:
        proc.kill()
        proc.wait()
