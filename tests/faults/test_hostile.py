"""Rows: hostile requests. Over SSH (the matrix row) and, property-based with hypothesis, straight
to the agent's stdin: whatever arrives, every line gets exactly one JSON reply of a documented
error type (never Internal), and the same agent keeps answering."""
from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_agents.agent import ERROR_TYPES, MAX_LINE_BYTES
from tests.agent_kit import faults, testing

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # a dev dependency: CI must have it
    if testing.in_ci():
        raise
    pytest.skip("hypothesis is not installed (pip install hypothesis)", allow_module_level=True)

AGENT = Path(__file__).resolve().parents[2] / "device_agents" / "agent.py"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


class Agent:
    """A real agent on pipes; ask() sends one line and returns its one reply (within 10 s)."""

    def __init__(self, cache: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(AGENT), "--cache", str(cache), "--idle-timeout", "300"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.pid = self.ask(b'{"id": 0, "op": "hello"}')["pid"]

    def ask(self, line: bytes) -> dict:
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 10.0)
        assert ready, f"no reply within 10 s to {line[:80]!r}"
        reply = json.loads(self.proc.stdout.readline())
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
        if not reply["ok"]:
            assert reply["error"]["type"] in ERROR_TYPES and reply["error"]["type"] != "Internal", reply
        return reply

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("fuzz") / "cache")
    yield a
    alive = a.proc.poll() is None
    a.close()
    assert alive, "the agent died during the fuzzing"


def test_hostile_requests_over_ssh(faults_ssh):
    out = faults.hostile_requests(faults_ssh)
    assert out.passed, (out.row(), out.details)


def test_deep_nesting_and_huge_lines_are_refused_quickly(agent):
    for line in (b"[" * 200000, b'{"a":' * 100000, b'["' + b"\\\\" * 1000 + b'"' + b"]" * 40):
        start = time.monotonic()
        assert agent.ask(line)["error"]["type"] == "BadRequest"
        assert time.monotonic() - start < 2.0
    start = time.monotonic()
    agent.proc.stdin.write(b"x" * (MAX_LINE_BYTES * 16))  # no newline yet: refused as soon as it is too long
    agent.proc.stdin.flush()
    reply = json.loads(agent.proc.stdout.readline())
    assert reply["error"]["type"] == "BadRequest" and "longer than" in reply["error"]["message"]
    agent.proc.stdin.write(b'{"id": 7, "op": "hello"}\n')  # still the long line: dropped, its reply was sent
    assert agent.ask(b'{"id": 8, "op": "hello"}')["id"] == 8
    assert time.monotonic() - start < 5.0


def test_nesting_at_the_limit_is_accepted(agent):
    ok = b'{"id": 1, "op": "hello", "x": ' + b"[" * 30 + b"]" * 30 + b"}"
    assert agent.ask(ok)["ok"]
    deep = b'{"id": 1, "op": "hello", "x": ' + b"[" * 40 + b"]" * 40 + b"}"
    assert agent.ask(deep)["error"]["type"] == "BadRequest"


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=4),
                    max_leaves=16)
HEX64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
REQUESTS = st.fixed_dictionaries(
    {"op": st.sampled_from(["hello", "put", "bench", "infer", "clean", "dance"]) | st.text(max_size=6) | JSON},
    optional={"id": JSON, "protocol": st.sampled_from([1, 2]) | JSON, "sha256": HEX64 | JSON,
              "ext": st.sampled_from([".onnx", ".tflite", ".bin", ".npy", ".exe"]) | JSON,
              "data_b64": st.sampled_from(["aGVsbG8=", "!!", ""]) | JSON, "bytes": JSON, "threads": JSON,
              "runs": JSON, "warmup": JSON, "min_seconds": JSON, "timeout_s": JSON,
              "lock_timeout": st.floats(0, 0.1) | JSON, "runtime": st.sampled_from(["onnxruntime", "tflite"]) | JSON,
              "inputs": JSON, "against": JSON, "client": JSON,
              "prewarm": st.lists(st.text(max_size=5), max_size=2) | JSON})


@FUZZ
@given(REQUESTS)
def test_any_request_object_gets_one_documented_reply(agent, req):
    agent.ask(json.dumps(req).encode())


@FUZZ
@given(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")))
def test_any_bytes_get_one_documented_reply(agent, line):
    if line.strip():
        agent.ask(line)


@FUZZ
@given(st.integers(1, 3000), st.sampled_from([b"[", b'{"k":', b'[{"k":']))
def test_any_depth_gets_one_documented_reply(agent, depth, opener):
    agent.ask(b'{"id": 1, "op": "hello", "x": ' + opener * depth)


def test_the_same_agent_answers_after_the_fuzzing(agent):
    assert agent.ask(b'{"id": 99, "op": "hello"}')["pid"] == agent.pid
