"""AgentClient: the host side of the agent protocol (see device_agents/agent.py) over any Transport.

It starts the agent (named by its sha256; uploaded only when starting it fails because that
file is not on the device, so a warm device costs one command and one round trip), checks
the protocol version, uploads models into the device's content-addressed cache, and maps the
agent's error types onto edgeprune's exceptions. Every call has a timeout; `retrying` reconnects
after a dropped connection or a crashed bench process with bounded, backed-off retries and
chains the last error. Bench, infer and clean wait at most `lock_timeout` for the device lock
(another host is measuring): the agent's "waiting" event goes to `on_event` (by default a
warning naming the holder), and a lock still held at the end is a TargetBusyError.
"""
from __future__ import annotations

import base64
import getpass
import io
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import numpy as np

from device_agents.agent import PROTOCOL_VERSION
from device_agents.transport import AgentChannel, ChannelTimeout, ConnectionLost, Transport, sha256_file, with_retries
from edgeprune.errors import BadInputError, DoesNotFitError, EdgePruneError, TargetBusyError, TargetUnreachableError

AGENT_FILE = Path(__file__).with_name("agent.py")
T = TypeVar("T")
LOCKED_OPS = ("bench", "infer", "clean")  # they wait for the device lock first
log = logging.getLogger(__name__)


class ProtocolMismatchError(TargetUnreachableError):
    """The agent on the device speaks another protocol version."""


class BenchCrashedError(ConnectionLost):
    """The bench process died (a signal other than the kernel's OOM killer); a retry may help."""


class NotInCacheError(TargetUnreachableError):
    """The model left the device cache (evicted by another agent) between put and use."""


@dataclass
class AgentOptions:
    """How to run the agent and how patient to be with it."""

    python: list[str] = field(default_factory=lambda: ["python3"])
    env: dict[str, str] = field(default_factory=dict)
    idle_timeout: float = 600.0
    op_timeout: float = 60.0
    retries: int = 2
    backoff: float = 0.5
    protocol: int = PROTOCOL_VERSION
    prewarm: list[str] = field(default_factory=list)  # runtimes whose bench process starts with the agent
    lock_timeout: float = 600.0  # seconds a bench, infer or clean waits for the device lock
    cache_max_mb: Optional[float] = None  # the device cache's cap (None: the agent's default, 2 GB)
    on_event: Optional[Callable[[str, dict[str, Any]], None]] = None  # (target, event); default: a warning


def map_agent_error(target: str, kind: str, message: str) -> EdgePruneError:
    """The edgeprune exception for an error the agent reported."""
    text = f"{target}: {message}"
    if kind == "OutOfMemory":
        return DoesNotFitError(f"{target}: does not fit (out of memory): {message}")
    if kind in ("BadModel", "BadInput", "ChecksumMismatch", "BadRequest"):
        return BadInputError(text)
    if kind == "ProtocolMismatch":
        return ProtocolMismatchError(text)
    if kind == "NoRuntime":
        return TargetUnreachableError(f"{text}; install it on the device or export another format")
    if kind == "Busy":
        return TargetBusyError(text)
    if kind == "BenchCrashed":
        return BenchCrashedError(text)
    if kind == "NotFound":
        return NotInCacheError(text)
    return TargetUnreachableError(f"{text} [{kind}]")


def _warn_event(target: str, event: dict[str, Any]) -> None:
    log.warning("%s: %s", target, event.get("message") or event.get("event"))


def _client_info() -> dict[str, Any]:
    """Who drives the device, for the agent's lock file."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in this environment
        user = str(os.getuid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user}


def _naming_file(exc: EdgePruneError, sha: str, local: Path) -> EdgePruneError:
    """The same error with the device's content-hash file name replaced by the user's file name."""
    text = str(exc)
    named = text.replace(f"{sha}{local.suffix.lower()}", local.name).replace(sha[:12], local.name)
    if named == text:
        return exc
    renamed = type(exc)(named)
    renamed.__cause__ = exc.__cause__
    return renamed


class AgentClient:
    """A session with the agent on one device."""

    def __init__(self, transport: Transport, options: Optional[AgentOptions] = None) -> None:
        self.transport = transport
        self.options = options or AgentOptions()
        self.channel: Optional[AgentChannel] = None
        self.hello: dict[str, Any] = {}
        self._next_id = 0
        self._present: set[str] = set()  # sha256s the agent of this session has confirmed

    @property
    def name(self) -> str:
        return self.transport.name

    def cache_dir(self) -> str:
        return f"{self.transport.workdir()}/cache"

    def open(self) -> dict[str, Any]:
        """Connect, start our agent (uploading it when it is missing) and say hello."""
        if self.channel is not None:
            return self.hello
        self._present = set()
        self.transport.connect()
        sha = sha256_file(AGENT_FILE)
        remote = f"{self.transport.workdir()}/agent-{sha[:16]}.py"
        try:
            self.hello = self._start(remote)
        except ConnectionLost:
            self.close()
            if self.transport.exists(remote):
                raise
            self.transport.upload(AGENT_FILE, remote)
            self.hello = self._start(remote)
        if self.hello.get("protocol") != self.options.protocol:
            self.close()
            raise ProtocolMismatchError(f"{self.name}: the agent speaks protocol {self.hello.get('protocol')}, "
                                        f"this client speaks {self.options.protocol}")
        return self.hello

    def _start(self, agent: str) -> dict[str, Any]:
        """Start the agent at the remote path and return its hello."""
        argv = list(self.options.python) + [agent, "--cache", self.cache_dir(),
                                             "--idle-timeout", str(self.options.idle_timeout)]
        for runtime in self.options.prewarm:
            argv += ["--prewarm", runtime]
        if self.options.cache_max_mb is not None:
            argv += ["--cache-max-mb", str(self.options.cache_max_mb)]
        if self.options.env:
            argv = ["env"] + [f"{k}={v}" for k, v in self.options.env.items()] + argv
        self.channel = self.transport.start(argv)
        return self.call("hello", client=_client_info())

    def close(self) -> None:
        """Say bye (best effort) and stop the agent."""
        if self.channel is not None:
            try:
                self.channel.send_line(json.dumps({"id": 0, "op": "bye"}).encode())
            except EdgePruneError:
                pass
            self.channel.close()
            self.channel = None

    def shutdown(self) -> None:
        """Stop the agent and close the transport."""
        self.close()
        self.transport.close()

    def __enter__(self) -> "AgentClient":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def call(self, op: str, timeout: Optional[float] = None, **fields: Any) -> dict[str, Any]:
        """One request and its reply; agent errors become edgeprune exceptions."""
        if self.channel is None:
            raise ConnectionLost(f"{self.name}: no agent session")
        self._next_id += 1
        request = {"id": self._next_id, "op": op, "protocol": self.options.protocol, **fields}
        wait = timeout or self.options.op_timeout
        if op in LOCKED_OPS:
            request.setdefault("lock_timeout", self.options.lock_timeout)
            wait += float(request["lock_timeout"])
        self.channel.send_line(json.dumps(request).encode())
        try:
            reply = self._read_reply(self._next_id, wait)
        except ChannelTimeout:
            self.close()  # a late agent is stopped, never left half-way through a request
            raise
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise map_agent_error(self.name, str(err.get("type")), str(err.get("message")))
        return reply

    def _read_reply(self, rid: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.channel.recv_line(max(0.01, deadline - time.monotonic()))
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if reply.get("id") not in (rid, None):
                continue
            if "ok" in reply:
                return reply
            if "event" in reply:
                (self.options.on_event or _warn_event)(self.name, reply)

    def retrying(self, fn: Callable[["AgentClient"], T]) -> T:
        """Run fn(self), reconnecting after a dropped connection; bounded, backed-off retries."""
        def attempt() -> T:
            self.open()
            return fn(self)

        def on_lost() -> None:
            self.close()
            self.transport.close()

        return with_retries(self.name, attempt, on_lost, self.options.retries, self.options.backoff)

    def ensure_file(self, local: Path, sha: Optional[str] = None) -> dict[str, Any]:
        """Put a local file into the device cache; uploaded only when that sha256 is missing."""
        sha = sha or sha256_file(local)
        if sha in self._present:
            return {"present": True}
        ext = Path(local).suffix.lower()
        reply = self.call("put", sha256=sha, ext=ext, bytes=Path(local).stat().st_size)
        if not reply.get("present"):
            self.transport.upload(Path(local), f"{self.cache_dir()}/{sha}{ext}")
            reply = self.call("put", sha256=sha, ext=ext)
        if not reply.get("present"):
            raise TargetUnreachableError(f"{self.name}: uploaded {Path(local).name} but the agent cannot see it")
        self._present.add(sha)
        return reply

    def bench(self, local: Path, sha: str, runtime: str, threads: int, warmup: int, runs: int,
              min_seconds: float, warmup_seconds: float, timeout: float,
              against: Optional[tuple[Path, str]] = None) -> dict[str, Any]:
        """Benchmark a model (uploading it first if needed); raw times come back in seconds.
        `against` (path, sha256): a second model benched in the same process, in alternating
        blocks (agents whose hello lists "paired_bench")."""
        def request() -> dict[str, Any]:
            self.ensure_file(local, sha)
            extra: dict[str, Any] = {}
            if against is not None:
                self.ensure_file(against[0], against[1])
                extra["against"] = {"sha256": against[1], "ext": Path(against[0]).suffix.lower()}
            return self.call("bench", timeout=timeout + 30.0, sha256=sha, ext=Path(local).suffix.lower(),
                             runtime=runtime, threads=threads, warmup=warmup, runs=runs,
                             min_seconds=min_seconds, warmup_seconds=warmup_seconds,
                             timeout_s=timeout, max_seconds=timeout, **extra)
        files = [(Path(local), sha)] + ([(Path(against[0]), against[1])] if against is not None else [])
        return self._with_model(files, request)

    def infer(self, local: Path, sha: str, runtime: str, threads: int, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the model on NCHW inputs on the device; outputs as numpy arrays."""
        def request() -> dict[str, Any]:
            self.ensure_file(local, sha)
            return self.call("infer", sha256=sha, ext=Path(local).suffix.lower(), runtime=runtime,
                             threads=threads, inputs=[_to_npy(a) for a in inputs])
        reply = self._with_model([(Path(local), sha)], request)
        return [np.load(io.BytesIO(base64.b64decode(o)), allow_pickle=False) for o in reply["outputs"]]

    def _with_model(self, files: list[tuple[Path, str]], request: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a request that uses cached models: put them again once if another agent evicted one
        meanwhile; a model that did not fit is gone from the device (the agent removed it); errors
        name the user's files, not their content hashes."""
        try:
            try:
                return request()
            except NotInCacheError:
                self._present.difference_update(sha for _, sha in files)
                return request()
        except EdgePruneError as exc:
            if isinstance(exc, DoesNotFitError):
                self._present.difference_update(sha for _, sha in files)
            for local, sha in files:
                exc = _naming_file(exc, sha, local)
            raise exc

    def clean_cache(self) -> dict[str, Any]:
        """Empty the device's model cache (waiting for the device lock): {"removed", "freed_bytes"}."""
        reply = self.call("clean")
        self._present = set()
        return {"removed": reply.get("removed", 0), "freed_bytes": reply.get("freed_bytes", 0)}


def _to_npy(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")
