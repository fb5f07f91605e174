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
