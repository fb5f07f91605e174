"""The host-side lock of a target: one measure, compare or infer at a time, with real processes and the real CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import BadInputError, TargetBusyError, TargetUnreachableError
from edgeprune.targets.lock import TargetLock, lock_timeout

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from pathlib import Path
from edgeprune.targets.lock import TargetLock
with TargetLock(sys.argv[1], 0, Path(sys.argv[2])).held():
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _cli(*args: str, cache: Path, timeout_s: float | None = None) -> subprocess.Popen:
    env = {**os.environ, "EDGEPRUNE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    if timeout_s is not None:
        env["EDGEPRUNE_LOCK_TIMEOUT"] = str(timeout_s)
    return subprocess.Popen([sys.executable, "-m", "edgeprune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, start_new_session=True)


def _profile(artifact: Path, cache: Path, *extra: str, timeout_s: float | None = None) -> subprocess.Popen:
    return _cli("profile", str(artifact), "--target", "x86-ort", "--runs", "10", "--no-cache", *extra,
                cache=cache, timeout_s=timeout_s)


def _wait_until_held_by(pid: int, folder: Path, deadline_s: float = 60.0) -> dict:
    lock = TargetLock("x86-ort", 0, folder)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        holder = lock.holder()
        if holder and holder["pid"] == pid:
            return holder
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never took the lock")


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of pid, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_reentrant_in_one_object_exclusive_between_objects(tmp_path):
    lock = TargetLock("t-a", 5, tmp_path)
    with lock.held(), lock.held():  # a session measuring inside its own hold does not wait for itself
        holder = lock.holder()
        assert holder["pid"] == os.getpid() and holder["target"] == "t-a"
        with pytest.raises(TargetBusyError, match=f"target t-a is busy: held by pid {os.getpid()} .* since "):
            with TargetLock("t-a", 0, tmp_path).held():
                pass
        with TargetLock("t-b", 0, tmp_path).held():  # another target is another lock
            pass
    assert lock.holder() is None  # the file is emptied before the lock is released
    with TargetLock("t-a", 0, tmp_path).held():
        pass


def test_lock_timeout_from_env_over_the_profile(monkeypatch):
    monkeypatch.delenv("EDGEPRUNE_LOCK_TIMEOUT", raising=False)
    assert lock_timeout(600) == 600
    monkeypatch.setenv("EDGEPRUNE_LOCK_TIMEOUT", "2.5")
    assert lock_timeout(600) == 2.5
    monkeypatch.setenv("EDGEPRUNE_LOCK_TIMEOUT", "soon")
    with pytest.raises(BadInputError, match="EDGEPRUNE_LOCK_TIMEOUT must be a number of seconds"):
        lock_timeout(600)


def test_profile_field_is_validated(local_target):
    with pytest.raises(BadInputError, match="lock_timeout must be >= 0"):
        dataclasses.replace(local_target, lock_timeout=-1)
    assert "lock_timeout" in local_target.to_dict()


def test_busy_error_is_a_target_error_with_exit_3():
    assert issubclass(TargetBusyError, TargetUnreachableError) and TargetBusyError.exit_code == 3


@pytest.mark.parametrize("op", ["measure", "compare", "infer", "check"])
def test_device_calls_hold_the_lock_once_check_does_not(local_target, artifacts, op, monkeypatch):
    """Every agent call of a measure, compare or infer runs inside one hold; check takes no lock."""
    target = dataclasses.replace(local_target, name=f"t-lock-{op}")
    onnx = artifacts["onnx"]
    calls = {"measure": lambda s: s.measure(onnx, runs=10, use_cache=False),
             "compare": lambda s: s.compare(onnx, onnx, rounds=2, runs=10, min_seconds=0.1, warmup_seconds=0.05),
             "infer": lambda s: s.infer(onnx, np.zeros((1, 1, 28, 28), np.float32)),
             "check": lambda s: s.check()}
    with target.session() as session:
        seen = []
        real = session.client.retrying

        def spy(fn):
            seen.append(session.lock.holder())
            return real(fn)

        monkeypatch.setattr(session.client, "retrying", spy)
        calls[op](session)
    if op == "check":
        assert seen == [None]
        return
    assert len(seen) >= 2 and all(h and h["pid"] == os.getpid() for h in seen)
    assert len({h["started"] for h in seen}) == 1  # one hold for the whole call (compare: all rounds)
    assert session.lock.holder() is None


def test_second_process_waits_and_names_the_holder(tmp_path, artifacts):
    """A real `edgeprune profile` waits for another process's hold, says whom for once, then measures."""
    folder = tmp_path / "locks"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "x86-ort", str(folder), "4"], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        waiter = _profile(artifacts["onnx"], tmp_path, "--min-seconds", "0.2", "--json", timeout_s=60)
        out, err = waiter.communicate(timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert waiter.returncode == 0, err
    assert json.loads(out)["target"] == "x86-ort"
    waiting = [line for line in err.splitlines() if line.startswith("waiting for target")]
    assert len(waiting) == 1, err
    assert waiting[0].startswith(f"waiting for target x86-ort: held by pid {holder.pid} (-c x86-ort ")
    assert " since " in waiting[0] and "giving up after 60 s" in waiting[0]
    assert time.monotonic() - start > 2.0  # it did wait for the holder


def test_busy_target_exits_3_and_a_killed_holder_leaves_no_lock(tmp_path, artifacts):
    """While a real profile measures, another gives up after EDGEPRUNE_LOCK_TIMEOUT with exit 3;
    after `kill -9` of that holder (its agent still running) the next profile does not wait."""
    folder = tmp_path / "locks"
    holder = _profile(artifacts["onnx"], tmp_path, "--min-seconds", "30")
    survivors: list[int] = []
    try:
        held = _wait_until_held_by(holder.pid, folder)
        assert held["command"].startswith("edgeprune profile ")
        busy = _profile(artifacts["onnx"], tmp_path, "--min-seconds", "0.2", "--json", timeout_s=1)
        out, err = busy.communicate(timeout=120)
        assert busy.returncode == 3, err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"edgeprune: error: target x86-ort is busy: held by pid {holder.pid} "
                               f"(edgeprune profile ") and "gave up after 1 s" in last
        assert json.loads(out)["error"]["type"] == "TargetBusyError" and "Traceback" not in err

        survivors = _descendants(holder.pid)
        assert survivors, "the holder's agent should be running"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert TargetLock("x86-ort", 0, folder).holder()["pid"] == holder.pid  # the dead holder's record
        start = time.monotonic()
        after = _profile(artifacts["onnx"], tmp_path, "--min-seconds", "0.2", "--json", timeout_s=20)
        out, err = after.communicate(timeout=120)
        assert after.returncode == 0, err
        assert "waiting for target" not in err and time.monotonic() - start < 20
    finally:
        _kill([holder.pid] + survivors)
        holder.wait()
