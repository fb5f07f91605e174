"""The agent's wire protocol, spoken directly over its stdin/stdout."""
from __future__ import annotations

import ast
import base64
import hashlib
import itertools
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
        from tests.agent_kit.testing import tiny_onnx
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


# ---------------------------------------------------------------- device lock, cache, cancellation

def _start(cache, *extra):
    return subprocess.Popen([sys.executable, str(AGENT), "--cache", str(cache), "--idle-timeout", "60", *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _send(proc, obj):
    proc.stdin.write(json.dumps(obj).encode() + b"\n")
    proc.stdin.flush()


def _read(proc, timeout=30.0):
    import select
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line from the agent"
    return json.loads(proc.stdout.readline())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.agent_kit.testing import tiny_onnx
    path = tiny_onnx(tmp_path_factory.mktemp("tiny") / "m.onnx")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _cached(cache, tiny):
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{tiny[1]}.onnx").write_bytes(tiny[0].read_bytes())
    return {"sha256": tiny[1], "ext": ".onnx", "runs": 5, "warmup_seconds": 0.01}


def _bench_processes(agent_pid):
    """Pids of the agent's children that are measuring (comm edgeprune-bench)."""
    return [p for p in _bench_children(agent_pid) if Path(f"/proc/{p}/comm").read_text().strip() == "edgeprune-bench"]


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return None


def test_device_lock_serializes_agents_and_names_the_holder(tmp_path, tiny):
    cache = tmp_path / "shared cache"
    bench = _cached(cache, tiny)
    a, b = _start(cache), _start(cache)
    try:
        _send(a, {"id": 1, "op": "hello", "client": {"host": "host-a", "pid": 4242, "user": "ann"}})
        _read(a)
        _send(a, {"id": 2, "op": "bench", "min_seconds": 3.0, **bench})
        assert _wait(lambda: _bench_processes(a.pid))
        _send(b, {"id": 3, "op": "bench", "min_seconds": 0.05, "lock_timeout": 0.5, **bench})
        event, busy = _read(b), _read(b)
        assert event["event"] == "waiting" and "ok" not in event and event["holder"]["agent_pid"] == a.pid
        assert "pid 4242 on host host-a (user ann)" in event["message"] and "bench of" in event["message"]
        assert busy["id"] == 3 and busy["error"]["type"] == "Busy" and "host-a" in busy["error"]["message"]
        _send(b, {"id": 4, "op": "bench", "min_seconds": 0.05, "lock_timeout": 60, **bench})
        assert _read(b)["event"] == "waiting"
        first, second = _read(a), _read(b)
        assert first["ok"] and second["ok"] and second["started_at"] >= first["ended_at"]
        assert second["lock_wait_s"] > 0.5
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_cache_is_capped_least_recently_used_first_and_clean_empties_it(tmp_path):
    cache = tmp_path / "cache"
    proc = _start(cache, "--cache-max-mb", str(2500 / (1024 * 1024)))  # room for two 1000-byte files
    blobs = [bytes([i]) * 1000 for i in range(4)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    try:
        for i, data in enumerate(blobs[:2]):
            _send(proc, {"id": i, "op": "put", "sha256": shas[i], "ext": ".bin", "data_b64": base64.b64encode(data).decode()})
            assert _read(proc)["evicted"] == []
        _send(proc, {"id": 5, "op": "put", "sha256": shas[0], "ext": ".bin"})  # used again: now the newest
        assert _read(proc)["present"]
        _send(proc, {"id": 6, "op": "put", "sha256": shas[2], "ext": ".bin", "data_b64": base64.b64encode(blobs[2]).decode()})
        assert _read(proc)["evicted"] == [f"{shas[1]}.bin"]
        _send(proc, {"id": 7, "op": "put", "sha256": shas[3], "ext": ".bin", "bytes": 1000})  # room before an upload
        assert _read(proc)["evicted"] == [f"{shas[0]}.bin"]
        _send(proc, {"id": 8, "op": "hello"})
        assert _read(proc)["cache"] == {"files": 1, "bytes": 1000, "max_bytes": 2500}
        _send(proc, {"id": 9, "op": "clean"})
        reply = _read(proc)
        assert reply["removed"] == 1 and reply["freed_bytes"] == 1000
        assert [p.name for p in cache.iterdir()] in ([], [".device.lock"])
    finally:
        proc.kill()
        proc.wait()


def test_client_eof_mid_bench_ends_bench_and_agent_at_once(tmp_path, tiny):
    proc = _start(tmp_path / "c")
    bench = _cached(tmp_path / "c", tiny)
    _send(proc, {"id": 1, "op": "bench", "min_seconds": 60.0, **bench})
    child = _wait(lambda: _bench_processes(proc.pid))
    assert child
    start = time.monotonic()
    proc.stdin.close()
    assert proc.wait(timeout=5) == 0 and time.monotonic() - start < 2.0
    assert _wait(lambda: not Path(f"/proc/{child[0]}").exists() or "Z" in Path(f"/proc/{child[0]}/stat").read_text().split()[2], 3)


def test_bye_mid_bench_cancels_it(tmp_path, tiny):
    proc = _start(tmp_path / "c")
    bench = _cached(tmp_path / "c", tiny)
    _send(proc, {"id": 1, "op": "bench", "min_seconds": 60.0, **bench})
    assert _wait(lambda: _bench_processes(proc.pid))
    start = time.monotonic()
    _send(proc, {"id": 2, "op": "bye"})
    assert _read(proc)["error"]["type"] == "Cancelled"
    assert _read(proc) == {"id": 2, "ok": True}
    assert proc.wait(timeout=5) == 0 and time.monotonic() - start < 2.0


@pytest.mark.parametrize("before, after, peak, oom", [
    ({"cgroup_oom_kill": 3, "cgroup_root": False}, {"cgroup_oom_kill": 4}, 10, True),
    ({"cgroup_oom_kill": 3, "cgroup_root": False, "vm_oom_kill": 1}, {"cgroup_oom_kill": 3, "vm_oom_kill": 2}, 10, False),
    ({"cgroup_oom_kill": 0, "cgroup_root": True, "vm_oom_kill": 5}, {"cgroup_oom_kill": 0, "vm_oom_kill": 6}, 10, True),
    ({"cgroup_root": True, "vm_oom_kill": 5, "limit_mb": 100}, {"vm_oom_kill": 5}, 99, False),
    ({"cgroup_failcnt": 7, "limit_mb": 100}, {"cgroup_failcnt": 9}, 10, True),  # old kernels: no OOM counters
    ({"cgroup_failcnt": 7, "limit_mb": 100}, {"cgroup_failcnt": 7}, 95, True),
    ({"cgroup_failcnt": 7, "limit_mb": 100}, {"cgroup_failcnt": 7}, 50, False),
    ({}, {}, 0, False),
])
def test_out_of_memory_only_when_the_kernel_says_so(before, after, peak, oom):
    sys.path.insert(0, str(AGENT.parent.parent))
    from device_agents.agent import killed_for_memory
    assert killed_for_memory(before, after, peak) is oom


class _SleepRunner:
    def __init__(self, seconds):
        self.seconds = seconds

    def run(self, arrays):
        time.sleep(self.seconds)


class _BusyRunner:
    """Spins on the CPU for `seconds` a run, or sleeps that long when `sleep` (no CPU time)."""
    def __init__(self, seconds, sleep=False):
        self.seconds, self.sleep = seconds, sleep

    def run(self, arrays):
        if self.sleep:
            time.sleep(self.seconds)
            return
        end = time.process_time() + self.seconds
        while time.process_time() < end:
            pass


def test_runs_are_timed_alone_or_by_their_share_of_cpu_time_under_a_quota():
    """Without a quota every run is its wall time; under one (a share) the runs share out their
    wall time by CPU time, so the total is the wall time and an A/B ratio is the CPU ratio."""
    sys.path.insert(0, str(AGENT.parent.parent))
    from device_agents.agent import _alternating_runs, _timed_runs, cpu_shares_of_wall
    alone, scale = _timed_runs(_SleepRunner(0.001), None, 20, 0.0, 5.0)
    assert len(alone) == 20 and len(set(alone)) > 1 and scale is None
    times, scale = cpu_shares_of_wall([0.004, 0.001, 0.005], 0.022, 0.010, share=0.5)
    assert scale == pytest.approx(2.2) and times == pytest.approx([0.0088, 0.0022, 0.011])
    assert cpu_shares_of_wall([0.0, 0.0], 0.02, 0.0) == (None, None)  # no CPU time: nothing to share
    assert cpu_shares_of_wall([0.001, 0.001], 0.02, 0.002, share=0.5) == (None, None)  # 20% used of 50%
    # a busy runner's CPU time is its 2 ms however loaded the host is; the wall per CPU second
    # is >= 1 (more when the other lane's tests hold the CPU), so share 0.1 keeps it CPU-bound
    busy, scale = _timed_runs(_BusyRunner(0.002), None, 20, 0.0, 5.0, share=0.1)
    assert len(busy) >= 20 and scale > 0.95 and all(t > 0.0019 for t in busy)
    slept, scale = _timed_runs(_BusyRunner(0.002, sleep=True), None, 5, 0.0, 5.0, share=0.5)
    assert len(slept) == 5 and scale is None and all(t >= 0.002 for t in slept)  # waited: wall times
    a, b, scale = _alternating_runs((_BusyRunner(0.001), None), (_BusyRunner(0.003), None), 30, 0.1, 5.0, share=0.1)
    assert len(a) >= 30 and len(b) >= 30 and scale is not None
    assert sum(b) / len(b) / (sum(a) / len(a)) == pytest.approx(3.0, rel=0.2)
    a, b, scale = _alternating_runs((_SleepRunner(0.001), None), (_SleepRunner(0.002), None), 10, 0.0, 5.0)
    assert scale is None and min(b) > min(a)


def test_protocol_mismatch(tmp_path):
    from device_agents.client import AgentClient, AgentOptions, ProtocolMismatchError
    from device_agents.local import LocalTransport
    client = AgentClient(LocalTransport("t-proto", workdir=str(tmp_path)), AgentOptions(python=[sys.executable],
                                                                                       protocol=99))
    with pytest.raises(ProtocolMismatchError, match="protocol 99"):
        client.open()
    client.shutdown()


def test_client_names_the_users_file_and_cleans_the_cache(tmp_path):
    from device_agents.client import AgentClient, AgentOptions
    from device_agents.local import LocalTransport
    from edgeprune.errors import BadInputError
    corrupt = tmp_path / "my model.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf" * 10)
    sha = hashlib.sha256(corrupt.read_bytes()).hexdigest()
    with AgentClient(LocalTransport("t-clean", workdir=str(tmp_path / "w")), AgentOptions(python=[sys.executable])) as c:
        with pytest.raises(BadInputError, match="cannot load my model.onnx") as info:
            c.bench(corrupt, sha, "onnxruntime", 1, 1, 5, 0.05, 0.01, timeout=30.0)
        assert sha[:12] not in str(info.value)
        assert c.clean_cache() == {"removed": 1, "freed_bytes": corrupt.stat().st_size}
        assert c.call("hello")["cache"]["files"] == 0


def test_agent_runs_on_python38(tmp_path):
    """hello, put, clean and the lock on the oldest Python the agent supports (where one is installed)."""
    import os
    import shutil
    python = shutil.which("python3.8")
    if python is None or subprocess.run([python, "-c", "pass"], capture_output=True).returncode != 0:
        pytest.skip("no python3.8 here")
    proc = subprocess.Popen([python, str(AGENT), "--cache", str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ""})
    out, err = proc.communicate(b'{"id": 1, "op": "hello"}\n' + b"[" * 5000 + b"\n" +
                                b'{"id": 2, "op": "put", "sha256": "' + b"a" * 64 + b'", "bytes": 10}\n'
                                b'{"id": 3, "op": "clean"}\n', timeout=60)
    replies = [json.loads(line) for line in out.splitlines()]
    assert [r.get("id") for r in replies] == [1, None, 2, 3], err
    assert replies[0]["python"].startswith("3.8") and replies[1]["error"]["type"] == "BadRequest"
    assert replies[2]["present"] is False and replies[3]["ok"]
