"""Emulated targets: a real sshd (or an adb stand-in) on 127.0.0.1 whose sessions run inside a
cgroup with the profile's CPU bandwidth and memory limit.

`up(target)` needs root (cgroups, sshd). Its state (port, keys, known_hosts, pids, cgroups)
lives in `state_dir(name)`; `client_settings` reads it so the emulated profile connects like
any other ssh/adb target, and `down` kills everything it started. Numbers measured this way
are labeled emulated and never stand for the board's. The cgroup lives in cgroup.py, the
sshd and the adb stand-in in servers.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

from edgeprune._io import atomic_write_bytes
from edgeprune.errors import BadInputError, TargetUnreachableError
from edgeprune.targets.emulate import cgroup
from edgeprune.targets.emulate.servers import start_adb_standin, start_sshd
from edgeprune.targets.target import Target


def state_root() -> Path:
    """$EDGEPRUNE_STATE_DIR/emulate, else ~/.cache/edgeprune/emulate."""
    env = os.environ.get("EDGEPRUNE_STATE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "edgeprune") / "emulate"


def state_dir(name: str) -> Path:
    return state_root() / name


def read_state(name: str) -> Optional[dict[str, Any]]:
    """The recorded state of an emulated target, or None when it is not up."""
    try:
        return json.loads((state_dir(name) / "state.json").read_text())
    except (OSError, ValueError):
        return None


def status(name: str) -> dict[str, Any]:
    """Whether the emulator is up, with its endpoint and limits."""
    state = read_state(name)
    if state is None:
        return {"name": name, "running": False}
    return {**state, "running": _alive(state.get("pid"))}


def client_settings(target: Target) -> dict[str, Any]:
    """Connection settings (host, port, user, key, ...) for the emulated target, from its state."""
    state = status(target.name)
    if not state["running"]:
        raise TargetUnreachableError(f"emulated target {target.name} is not up: run `edgeprune emulate up "
                                     f"{target.name}` (as root)")
    keys = ("host", "port", "user", "key", "known_hosts", "serial", "adb_server", "python")
    return {k: state.get(k) for k in keys if state.get(k) is not None}


def up(target: Target) -> dict[str, Any]:
    """Start the emulator for an emulated profile (idempotent); returns its state."""
    if not target.emulated:
        raise BadInputError(f"{target.name} is not an emulated target (its profile has no emulation:)")
    _require_root(target.name)
    current = status(target.name)
    if current["running"]:
        return current
    down(target.name)  # clear a stale state directory
    sdir = state_dir(target.name)
    sdir.mkdir(parents=True, exist_ok=True)
    emu = target.emulation
    dirs = cgroup.create(target.name, emu.cpu_fraction, emu.memory_mb, emu.cfs_period_us)
    state = {"name": target.name, "host": "127.0.0.1", "python": sys.executable, "cgroups": dirs,
             "cgroup_version": cgroup.version(), "cfs": list(cgroup.cfs_settings(emu.cpu_fraction,
                                                                                   emu.cfs_period_us)),
             "memory_mb": emu.memory_mb, "transport": target.transport}
    _write_state(sdir, state)  # so `down` can clean up even if the start fails
    try:
        started = start_adb_standin(target.name, sdir, dirs) if target.transport == "adb" else start_sshd(sdir, dirs)
        state.update(started)
    except BaseException:
        down(target.name)
        raise
    _write_state(sdir, state)
    return {**state, "running": True}


def down(name: str) -> dict[str, Any]:
    """Stop the emulator and everything it started; remove its cgroups and state."""
    state = read_state(name)
    if state is None:
        return {"name": name, "running": False, "stopped": False}
    _kill_tree(state.get("pid"))
    if state.get("cgroups"):
        cgroup.destroy(state["cgroups"])
    shutil.rmtree(state_dir(name), ignore_errors=True)
    return {"name": name, "running": False, "stopped": True}


def _require_root(name: str) -> None:
    if os.geteuid() != 0:
        raise TargetUnreachableError(f"emulate up {name} needs root (it creates cgroups and runs sshd); "
                                     f"run it as root")


def _write_state(sdir: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(sdir / "state.json", json.dumps(state, indent=2).encode())


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def _descendants(pid: int) -> list[int]:
    """All descendants of pid (read from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: Optional[int]) -> None:
    if not pid or not _alive(pid):
        return
    for p in [pid] + _descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)
