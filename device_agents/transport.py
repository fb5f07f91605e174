"""The Transport interface: how the host reaches a device and starts the agent there.

A transport knows four things (TVM rpc style, one interface with a local reference):
connect/close, where its work directory is, how to upload a file atomically (SFTP,
adb push, a copy), and how to start a command whose stdin/stdout carry JSON lines
(an AgentChannel). The JSON protocol itself lives in device_agents/client.py.

Errors: everything a transport raises is a TargetUnreachableError; ConnectionLost marks the
ones worth retrying (the link dropped or the agent died), the others (refused key, unknown
host key) are final.
"""
from __future__ import annotations

import collections
import hashlib
import os
import queue
import shlex
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from edgeprune.errors import TargetUnreachableError


class ConnectionLost(TargetUnreachableError):
    """The connection or the agent went away; the client may reconnect and retry."""


class ChannelTimeout(TargetUnreachableError):
    """The agent did not answer within the operation's timeout."""


def sha256_file(path: "str | os.PathLike[str]", chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's contents (the name of a model in the device cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def quote_command(argv: Sequence[str]) -> str:
    """One shell command line from argv, every word quoted (never trust file names)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


class AgentChannel:
    """Line-oriented stdin/stdout of a running agent, read by a background thread."""

    def __init__(self, read: Callable[[int], bytes], write: Callable[[bytes], None],
                 read_err: Optional[Callable[[int], bytes]], describe: str) -> None:
        self._write = write
        self._lines: "queue.Queue[Optional[bytes]]" = queue.Queue()
        self._stderr: collections.deque = collections.deque(maxlen=20)
        self.describe = describe
        self._closed = False
        threading.Thread(target=self._pump, args=(read,), daemon=True).start()
        if read_err is not None:
            threading.Thread(target=self._pump_err, args=(read_err,), daemon=True).start()

    def _pump(self, read: Callable[[int], bytes]) -> None:
        buf = b""
        try:
            while True:
                chunk = read(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._lines.put(line)
        except Exception:  # the link broke: same as EOF for the reader
            pass
        self._lines.put(None)

    def _pump_err(self, read: Callable[[int], bytes]) -> None:
        try:
            for chunk in iter(lambda: read(65536), b""):
                self._stderr.extend(chunk.decode("utf-8", "replace").splitlines())
        except Exception:
            pass

    def send_line(self, data: bytes) -> None:
        """Write one line to the agent's stdin."""
        try:
            self._write(data + b"\n")
        except Exception as exc:
            raise ConnectionLost(f"{self.describe}: cannot send to the agent ({exc})") from exc

    def recv_line(self, timeout: float) -> bytes:
        """The agent's next stdout line; ConnectionLost on EOF, ChannelTimeout when it is late."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise ChannelTimeout(f"{self.describe}: no answer from the agent within {timeout:.0f} s") from None
            if line is None:
                self._lines.put(None)
                raise ConnectionLost(f"{self.describe}: the agent exited or the connection closed{self.stderr_tail()}")
            if line.startswith(b"{"):
                return line

    def stderr_tail(self) -> str:
        """The last stderr line of the agent, as ' (...)' or ''."""
        lines = [l for l in list(self._stderr) if l.strip()]
        return f" ({lines[-1].strip()[:200]})" if lines else ""

    def close(self) -> None:
        """Stop the agent; subclasses free their process or channel."""
        self._closed = True


class Transport(ABC):
    """How the host reaches one device: connect, upload, start the agent."""

    kind: str = "abstract"

    def __init__(self, name: str, connect_timeout: float = 10.0, op_timeout: float = 60.0) -> None:
        self.name = name
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout

    @abstractmethod
    def connect(self) -> None:
        """Open the connection (idempotent)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection and everything started through it."""

    @abstractmethod
    def workdir(self) -> str:
        """Absolute directory on the device for the agent and its cache."""

    @abstractmethod
    def exists(self, remote: str) -> bool:
        """True when the remote path exists."""

    @abstractmethod
    def upload(self, local: Path, remote: str) -> None:
        """Copy a local file to `remote` atomically (temporary name, then rename)."""

    @abstractmethod
    def start(self, argv: Sequence[str]) -> AgentChannel:
        """Start a command on the device and return its line channel."""

    @abstractmethod
    def run(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        """Run a command to completion: (exit code, stdout, stderr)."""

    def __enter__(self) -> "Transport":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


R = TypeVar("R")


def with_retries(name: str, attempt: Callable[[], R], on_lost: Callable[[], None], retries: int,
                 backoff: float) -> R:
    """Call `attempt`, retrying after a ConnectionLost with exponential backoff, at most
    `retries` more times; then a TargetUnreachableError chained to the last error."""
    last: Optional[ConnectionLost] = None
    for n in range(retries + 1):
        if n:
            time.sleep(backoff * (2 ** (n - 1)))
        try:
            return attempt()
        except ConnectionLost as exc:
            last = exc
            on_lost()
    raise TargetUnreachableError(
        f"{name}: failed after {retries + 1} attempt(s); last error: {last}") from last
