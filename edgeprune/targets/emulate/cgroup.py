"""Create and remove the cgroup an emulated target runs in (cgroup v1 or v2), as root.

CPU: a CFS quota of cpu_fraction of one core per period (20 ms by default); the agent times
each run by its share of the loop's CPU time times the loop's wall time, so the limit reads as
a slower CPU (README, "Emulated latency").
Memory: a hard limit with swap off, so a model that does not fit is OOM-killed.
"""
from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

from edgeprune.errors import TargetUnreachableError

ROOT = Path("/sys/fs/cgroup")
MIN_QUOTA_US = 1000  # the kernel refuses a smaller CFS quota


def version() -> int:
    """2 on a unified hierarchy, 1 when the cpu and memory v1 controllers are mounted."""
    if (ROOT / "cgroup.controllers").exists():
        return 2
    if (ROOT / "cpu" / "cpu.cfs_quota_us").exists() and (ROOT / "memory").is_dir():
        return 1
    raise TargetUnreachableError("no usable cgroup hierarchy at /sys/fs/cgroup (need cpu and memory controllers)")


def cfs_settings(cpu_fraction: float, period_us: int) -> tuple[int, int]:
    """(quota_us, period_us): the period stretched only as far as the minimum quota needs."""
    period = max(int(period_us), math.ceil(MIN_QUOTA_US / cpu_fraction))
    return int(round(cpu_fraction * period)), period


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise TargetUnreachableError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def create(group: str, cpu_fraction: float, memory_mb: int, period_us: int) -> list[str]:
    """Make the cgroup(s) `edgeprune/<group>` with the limits; returns their directories."""
    quota, period = cfs_settings(cpu_fraction, period_us)
    limit = str(int(memory_mb) * 1024 * 1024)
    if version() == 2:
        return [str(_create_v2(group, quota, period, limit))]
    cpu = ROOT / "cpu" / "edgeprune" / group
    mem = ROOT / "memory" / "edgeprune" / group
    for d in (cpu, mem):
        d.mkdir(parents=True, exist_ok=True)
    _write(cpu / "cpu.cfs_period_us", str(period))
    _write(cpu / "cpu.cfs_quota_us", str(quota))
    _write(mem / "memory.limit_in_bytes", limit)
    if (mem / "memory.memsw.limit_in_bytes").exists():
        _write(mem / "memory.memsw.limit_in_bytes", limit)
    if (mem / "memory.swappiness").exists():
        _write(mem / "memory.swappiness", "0")
    return [str(cpu), str(mem)]


def _create_v2(group: str, quota: int, period: int, limit: str) -> Path:
    parent = ROOT / "edgeprune"
    parent.mkdir(exist_ok=True)
    for d in (ROOT, parent):
        _write(d / "cgroup.subtree_control", "+cpu +memory")
    path = parent / group
    path.mkdir(exist_ok=True)
    _write(path / "cpu.max", f"{quota} {period}")
    _write(path / "memory.max", limit)
    if (path / "memory.swap.max").exists():
        _write(path / "memory.swap.max", "0")
    return path


def procs_files(dirs: list[str]) -> list[str]:
    """The cgroup.procs files a process writes its pid into to join."""
    return [str(Path(d) / "cgroup.procs") for d in dirs]


def pids(dirs: list[str]) -> set[int]:
    """Pids currently inside the cgroup(s)."""
    found: set[int] = set()
    for f in procs_files(dirs):
        try:
            found.update(int(x) for x in Path(f).read_text().split())
        except OSError:
            continue
    return found


def destroy(dirs: list[str], timeout: float = 5.0) -> None:
    """Kill every process in the cgroup(s), then remove them."""
    deadline = time.monotonic() + timeout
    while pids(dirs) and time.monotonic() < deadline:
        for pid in pids(dirs):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    for d in dirs:
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            time.sleep(0.2)
            os.rmdir(d)
