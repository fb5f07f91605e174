"""The host-side lock of a target: one measurement or inference at a time per device from this host.

One lock file per target, `<cache dir>/locks/<name>.lock`, held with flock(2) for the length
of one measure, compare or infer, never for a whole job, so other processes take turns between
measurements but never interrupt one. The holder writes who it is into the file (pid, host,
command line, start time); a client that finds the lock taken says once on stderr whom it
waits for, polls, and after its timeout raises TargetBusyError (exit 3) naming the holder.

The kernel drops a flock when the last descriptor of the holder's open file closes, so a
holder killed with -9 leaves no lock behind. The descriptor is opened close-on-exec, so an
agent or other child started while the lock is held does not inherit it and cannot keep it
alive. Two hosts driving one board are serialized by the lock on the device, in the agent.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from edgeprune._progress import write
from edgeprune.errors import BadInputError, TargetBusyError
from edgeprune.targets.cache import cache_dir

TIMEOUT_ENV = "EDGEPRUNE_LOCK_TIMEOUT"
POLL_S = 0.1
SETTLE_S = 0.5  # a short wait passes silently, and gives a new holder time to write who it is
MAX_COMMAND = 80


def lock_dir() -> Path:
    """Where the lock files live: `locks/` next to the measurement cache."""
    return cache_dir() / "locks"


def lock_timeout(default: float) -> float:
    """Seconds to wait for a busy target: $EDGEPRUNE_LOCK_TIMEOUT when set, else `default`."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise BadInputError(f"{TIMEOUT_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


class TargetLock:
    """The lock of one target; re-entrant, so nested `held()` blocks of one object take it once."""

    def __init__(self, target: str, timeout: float, folder: Optional[Path] = None) -> None:
        self.target = target
        self.timeout = float(timeout)
        self.path = Path(folder or lock_dir()) / f"{re.sub(r'[^A-Za-z0-9._-]', '_', target)}.lock"
        self._fd: Optional[int] = None
        self._depth = 0
        self._guard = threading.RLock()  # threads sharing this object take turns too

    @contextlib.contextmanager
    def held(self) -> Iterator["TargetLock"]:
        """Hold the lock for the block, waiting up to `timeout` seconds for another holder."""
        with self._guard:
            if self._depth == 0:
                self._fd = self._acquire()
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def holder(self) -> Optional[dict[str, Any]]:
        """Who holds the lock, as the holder wrote it (None when the file says nobody)."""
        try:
            data = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _acquire(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise BadInputError(f"cannot open the lock file of target {self.target} at {self.path}: "
                                f"{exc.strerror}") from None
        try:
            self._wait(fd)
            _write_holder(fd, self.target)
        except BaseException:
            os.close(fd)  # closing drops the flock too, if it was taken
            raise
        return fd

    def _wait(self, fd: int) -> None:
        start = time.monotonic()
        said = False
        while not _try_lock(fd):
            waited = time.monotonic() - start
            if waited >= self.timeout:
                raise TargetBusyError(f"target {self.target} is busy: {describe_holder(self.holder())}; gave up "
                                      f"after {self.timeout:g} s (set {TIMEOUT_ENV} or the profile's "
                                      f"lock_timeout to wait longer)")
            if not said and waited >= min(SETTLE_S, self.timeout):
                write(f"waiting for target {self.target}: {describe_holder(self.holder())} "
                      f"(giving up after {self.timeout:g} s)")
                said = True
            time.sleep(min(POLL_S, max(0.0, self.timeout - waited)))

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # before unlocking: the next waiter must not read us as the holder
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def describe_holder(holder: Optional[dict[str, Any]]) -> str:
    """`held by pid 1234 (edgeprune profile m.onnx) since 10:31:02`, from a lock file's holder."""
    if not holder or "pid" not in holder:
        return "held by another process"
    where = "" if holder.get("host") in (None, socket.gethostname()) else f" on {holder['host']}"
    started = float(holder.get("started") or time.time())
    fmt = "%H:%M:%S" if time.time() - started < 86400 else "%Y-%m-%d %H:%M:%S"
    return (f"held by pid {holder['pid']}{where} ({holder.get('command') or '?'}) "
            f"since {time.strftime(fmt, time.localtime(started))}")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_holder(fd: int, target: str) -> None:
    info = {"target": target, "pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
            "started": time.time()}
    data = json.dumps(info).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _command() -> str:
    """This process's command line, short: `edgeprune profile m.onnx --target x86-ort`."""
    argv = list(sys.argv) or ["python"]
    head = Path(argv[0])
    if head.parent.name == "edgeprune" and head.name in ("cli.py", "__main__.py"):  # python -m edgeprune.cli
        argv[0] = "edgeprune"
    else:
        argv[0] = head.name or argv[0]
    text = " ".join(argv)
    return text if len(text) <= MAX_COMMAND else text[:MAX_COMMAND - 3] + "..."
