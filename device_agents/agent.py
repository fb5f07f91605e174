#!/usr/bin/env python3
"""edgeprune device agent: one file, Python 3.8+, stdlib + numpy + whichever runtime it finds.

Wire protocol (protocol version 1): JSON lines on stdin/stdout, one request per line.

    request   {"id": 1, "op": "hello", "protocol": 1}
    reply     {"id": 1, "ok": true, ...fields...}
    error     {"id": 1, "ok": false, "error": {"type": "BadModel", "message": "..."}}
    event     {"id": 1, "event": "waiting", "holder": {...}, "message": "..."}   (no "ok": not the reply)

Every request line gets exactly one reply. A line longer than MAX_LINE_BYTES (1 MiB) is answered
with BadRequest as soon as it crosses the limit and discarded up to its newline (payloads go as
files, never through the stream); JSON nested deeper than MAX_DEPTH is refused before it is
parsed; any exception becomes an error reply and the agent carries on.

Operations:
    hello   protocol version, runtimes {name: version}, python, cpu, cores, memory_mb,
            hostname, cache {files, bytes, max_bytes}, agent {rss_mb, open_fds}, and where
            available throttled (Raspberry Pi vcgencmd) and nvpmodel (Jetson). A request whose
            "protocol" differs from ours is a ProtocolMismatch. "client": {"host", "pid", "user"}
            names the client in the device lock's holder record.
    put     {"sha256", "ext"[, "data_b64"][, "bytes"]}: register a file in the content-addressed
            cache (<cache>/<sha256><ext>). Large files are uploaded beforehand by SFTP or adb push;
            put verifies the hash (a mismatch deletes the file) and reports "present". "bytes"
            (the size of a file about to be uploaded) lets the agent make room first. The cache
            is capped (--cache-max-mb): the least recently used files are evicted.
    bench   {"sha256", "ext", "runtime", "threads", "warmup", "runs", "min_seconds",
            "warmup_seconds", "timeout_s", "lock_timeout"}: runs in a FRESH child process so peak
            memory is that model's alone; returns raw per-run times (seconds), load_ms,
            peak_memory_mb (VmHWM after the runs minus VmRSS before loading the model),
            memory_method, and started_at/ended_at (device clock). Under a CFS CPU quota (an
            emulated device, a container) each run's time is its share of the runs' process CPU
            time times their wall time (`cpu_shares_of_wall`), said in "timing". The child is
            pre-started with numpy and the runtime already imported (one per runtime, never
            reused: a new one is started after each bench), so a bench does not pay for
            interpreter start-up and imports; `--prewarm RUNTIME` on the command line starts
            the first one at once.
            With "against": {"sha256", "ext"} the child, after the model's warm-up (and its peak
            memory reading), loads and warms the second model too and alternates short blocks
            (~20 ms) of the two until each has its runs and min_seconds: an interleaved A/B in one
            process, so both see the same moment of the device. The second model's times come
            back as "against_times_s". hello lists "paired_bench" in "features".
    infer   {"sha256", "ext", "runtime", "threads", "inputs": [base64 .npy], "lock_timeout"}
            -> "outputs". Inputs are NCHW; when the model wants NHWC they are transposed. Float
            inputs to an int8 input are quantized, and int8 outputs dequantized, with the tensor's
            scale and zero point, so the caller sends and gets floats whatever the precision.
    clean   {"lock_timeout"}: empty the device cache -> "removed", "freed_bytes".
    bye     ends the agent.

The device lock: bench, infer, clean and cache eviction hold an flock on <cache>/.device.lock,
so one measurement runs at a time per device even when several hosts drive it; the file names
the holder (JSON: agent pid, client host/pid/user, op, since). A request that finds it held
sends a "waiting" event naming the holder, waits up to "lock_timeout" seconds (default 600)
and then answers Busy. Pre-started children import their runtime only while this agent holds
the lock, so no import overlaps another agent's measurement.

Failure classes: OutOfMemory only when the kernel says so (the memory cgroup's oom_kill count,
or /proc/vmstat's, rose; on kernels without those counters the cgroup's failcnt, or a peak near
the memory limit) or when the runtime's allocation failed; a model that did not fit is removed
from the cache. Any other death of the bench process is BenchCrashed (the client retries it);
BadModel is only a model the runtime refused to load; a failure while running is RunFailed.

Cancellation: while it waits for the lock or a bench, the agent watches its stdin; EOF (the
client left: Ctrl-C, closed channel, lost connection) kills the bench process and ends the
agent at once, and a "bye" arriving meanwhile cancels the bench (Cancelled).

Error types: ProtocolMismatch, BadRequest, NotFound, ChecksumMismatch, NoRuntime, BadModel,
BadInput, OutOfMemory, Timeout, Busy, BenchCrashed, RunFailed, Cancelled, Internal. The agent
exits on stdin EOF, when its parent goes away, on SIGTERM/SIGHUP (ending its children first),
or after --idle-timeout seconds without a request.
"""
import base64
import binascii
import collections
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PROTOCOL_VERSION = 1
HIDE_RUNTIMES_ENV = "EDGEPRUNE_AGENT_HIDE_RUNTIMES"
READY_LINE = '{"ready": true}\n'
READY_TIMEOUT_S = 120.0
BLOCK_S = 0.02  # paired bench: how long each model runs before the other takes its turn
TFLITE_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
TFLITE_DISTS = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                "tensorflow": "tensorflow"}
MAX_LINE_BYTES = 1 << 20
MAX_DEPTH = 32
LOCK_FILE = ".device.lock"
LOCK_POLL_S = 0.05
HOLDER_WRITE_S = 0.2  # a lock just taken has an empty record until its holder writes it
DEFAULT_LOCK_TIMEOUT_S = 600.0
DEFAULT_CACHE_MAX_MB = 2048.0
STALE_UPLOAD_S = 3600.0  # a partial upload older than this is left over from an interrupted one
STDERR_KEEP = 1 << 16  # the tail of a bench process's stderr kept for error messages
OOM_PEAK_SHARE = 0.9  # without kernel OOM counters: a SIGKILL this close to the limit is an OOM
CACHE_NAME = re.compile(r"^[0-9a-f]{64}\.(onnx|tflite|bin|npy)$")
ERROR_TYPES = ("ProtocolMismatch", "BadRequest", "NotFound", "ChecksumMismatch", "NoRuntime", "BadModel",
               "BadInput", "OutOfMemory", "Timeout", "Busy", "BenchCrashed", "RunFailed", "Cancelled",
               "Internal")


class AgentError(Exception):
    """An error reported to the client as {"type", "message"}."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


class ClientGone(Exception):
    """The client closed our stdin: stop what we are doing and exit."""


# ---------------------------------------------------------------- device facts

def _module_version(top):
    """Version of an installed distribution without importing it (imports can be slow)."""
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    dist = TFLITE_DISTS.get(top, top)
    for name in (dist, dist + "-cpu", top):
        try:
            return metadata.version(name)
        except Exception:
            continue
    return None


def _has_module(name):
    """True when `name` can be imported, without importing it."""
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_runtimes():
    """{runtime: {"module", "version"}} for the runtimes this Python can import."""
    if os.environ.get(HIDE_RUNTIMES_ENV):
        return {}
    found = {}
    if _has_module("onnxruntime"):
        found["onnxruntime"] = {"module": "onnxruntime", "version": _module_version("onnxruntime")}
    for module in TFLITE_MODULES:
        top = module.split(".")[0]
        if _has_module(top):
            found["tflite"] = {"module": module, "version": _module_version(top)}
            break
    return found


def _cpu_model():
    """CPU model name from /proc/cpuinfo (x86 'model name', ARM 'Model'/'Hardware')."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _memory_mb():
    """Total memory in MB, or the cgroup limit when that is lower."""
    total = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    limit = cgroup_memory_limit_mb()
    if limit is not None and (total is None or limit < total):
        return limit
    return total


def _cgroup_paths():
    """{controller: path} of this process from /proc/self/cgroup ('' for cgroup v2)."""
    paths = {}
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                parts = line.strip().split(":", 2)
                if len(parts) == 3:
                    for ctl in parts[1].split(","):
                        paths[ctl] = parts[2]
    except OSError:
        pass
    return paths


def _read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _memory_cgroup_dir():
    """Directory of this process's memory cgroup (v1 or v2), or None."""
    paths = _cgroup_paths()
    if "memory" in paths:
        return "/sys/fs/cgroup/memory" + paths["memory"]
    if "" in paths and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "/sys/fs/cgroup" + paths[""]
    return None


def cgroup_memory_limit_mb():
    """The memory limit of this process's cgroup in MB, or None when unlimited."""
    base = _memory_cgroup_dir()
    if base is None:
        return None
    for name in ("memory.limit_in_bytes", "memory.max"):
        value = _read(os.path.join(base, name))
        if value and value != "max" and int(value) < (1 << 60):
            return int(value) / (1024.0 * 1024.0)
    return None


def cpu_quota():
    """(quota_us, period_us) of the CFS bandwidth limit on this process's cgroup, or None."""
    paths = _cgroup_paths()
    if "cpu" in paths:
        base = "/sys/fs/cgroup/cpu" + paths["cpu"]
        quota, period = _read(base + "/cpu.cfs_quota_us"), _read(base + "/cpu.cfs_period_us")
    elif "" in paths and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        quota, _, period = (_read("/sys/fs/cgroup" + paths[""] + "/cpu.max") or "").partition(" ")
    else:
        return None
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None  # "max" or "-1": no limit
    return (quota, period) if quota > 0 and period > 0 else None


def _counter(text, key):
    """The integer after `key` in a 'key value' per line file (None when absent)."""
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def memory_events():
    """What the kernel recorded about memory so far: the memory cgroup's OOM kills and failcnt,
    /proc/vmstat's OOM kills (None where this kernel does not count them) and the limit."""
    events = {"cgroup_oom_kill": None, "cgroup_failcnt": None, "cgroup_root": True,
              "vm_oom_kill": _counter(_read("/proc/vmstat"), "oom_kill"),
              "limit_mb": cgroup_memory_limit_mb()}
    base = _memory_cgroup_dir()
    if base is not None:
        events["cgroup_root"] = base.rstrip("/") in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup")
        for name in ("memory.events", "memory.oom_control"):
            count = _counter(_read(os.path.join(base, name)), "oom_kill")
            if count is not None:
                events["cgroup_oom_kill"] = count
                break
        failcnt = _read(os.path.join(base, "memory.failcnt"))
        if failcnt and failcnt.isdigit():
            events["cgroup_failcnt"] = int(failcnt)
    if events["limit_mb"] is None:
        events["limit_mb"] = _memory_mb()
    return events


def _grew(before, after, key):
    """after[key] - before[key], or None when either is unknown."""
    if before.get(key) is None or after.get(key) is None:
        return None
    return after[key] - before[key]


def killed_for_memory(before, after, peak_mb):
    """Whether a SIGKILLed bench process was killed by the kernel for memory.

    The memory cgroup's oom_kill count is the kernel's own word (it counts global OOM kills of
    the cgroup's processes too); /proc/vmstat's when the agent sits in the root cgroup. Kernels
    before 4.13 count neither: then the cgroup's failcnt rising, or a peak near the limit."""
    cgroup = _grew(before, after, "cgroup_oom_kill")
    if cgroup is not None and not before.get("cgroup_root"):
        return cgroup > 0
    vm = _grew(before, after, "vm_oom_kill")
    if vm is not None:
        return vm > 0
    if cgroup is not None:
        return cgroup > 0
    if (_grew(before, after, "cgroup_failcnt") or 0) > 0:
        return True
    limit = before.get("limit_mb")
    return bool(limit and peak_mb and peak_mb >= OOM_PEAK_SHARE * limit)


def agent_usage():
    """This agent's resident memory (MB) and open file descriptors, for soak checks."""
    rss = _status_kb("VmRSS")
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    return {"rss_mb": rss / 1024.0 if rss is not None else None, "open_fds": fds}


def _run_quiet(argv, timeout=5.0):
    """Output of a small system command, or None when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace").strip() if out.returncode == 0 else None


def throttled_state():
    """Raspberry Pi `vcgencmd get_throttled` as an int bit field, or None elsewhere."""
    text = _run_quiet(["vcgencmd", "get_throttled"])
    if not text or "=" not in text:
        return None
    try:
        return int(text.split("=", 1)[1], 16)
    except ValueError:
        return None


def nvpmodel_mode():
    """Jetson power mode from `nvpmodel -q`, or None elsewhere."""
    text = _run_quiet(["nvpmodel", "-q"])
    if not text:
        return None
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# ---------------------------------------------------------------- requests: size, depth, fields

TOO_LONG = object()  # stands in the line queue for a line that went over MAX_LINE_BYTES
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STRINGS = re.compile(b'"[^"]*"')


class LineReader(object):
    """Lines from a file descriptor, each at most max_bytes. A longer line is queued as
    TOO_LONG as soon as it crosses the limit, and the rest of it is dropped up to its newline,
    so a huge line without a newline costs neither memory nor time."""

    def __init__(self, fd, max_bytes):
        self.fd, self.max_bytes = fd, max_bytes
        self.buf = bytearray()
        self.skipping = False
        self.eof = False
        self.lines = collections.deque()

    def feed(self, chunk):
        """Split a chunk into lines; an empty chunk is EOF."""
        if not chunk:
            self.eof = True
            return
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            piece = chunk[start:] if newline < 0 else chunk[start:newline]
            if not self.skipping:
                if len(self.buf) + len(piece) > self.max_bytes:
                    self.lines.append(TOO_LONG)
                    self.buf = bytearray()
                    self.skipping = True
                else:
                    self.buf += piece
            if newline < 0:
                return
            if not self.skipping and self.buf.strip():
                self.lines.append(bytes(self.buf))
            self.buf = bytearray()
            self.skipping = False
            start = newline + 1


def _too_deep(line, limit):
    """True when the JSON text nests arrays and objects deeper than `limit` (strings skipped).
    Costs nothing for ordinary requests: only a line with more than `limit` brackets is scanned."""
    if line.count(b"[") + line.count(b"{") <= limit:
        return False
    text = _STRINGS.sub(b"", line.replace(b"\\\\", b"").replace(b'\\"', b""))
    depth = 0
    for ch in text.translate(None, _NOT_BRACKETS):
        if ch in (91, 123):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _depth(obj):
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _reject_constant(name):
    raise ValueError("%s is not a number this protocol accepts" % name)


def parse_request(line):
    """The request dict of one line; BadRequest for anything else (never another exception)."""
    if _too_deep(line, MAX_DEPTH):
        raise AgentError("BadRequest", "request nests deeper than %d levels" % MAX_DEPTH)
    try:
        req = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise AgentError("BadRequest", "not JSON: %s" % str(exc)[:200])
    if _depth(req) > MAX_DEPTH:
        raise AgentError("BadRequest", "request nests deeper than %d levels" % MAX_DEPTH)
    if not isinstance(req, dict):
        raise AgentError("BadRequest", "a request is a JSON object with an op")
    return req


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def number(req, name, default, low, high, integer=False):
    """A numeric field in [low, high]; BadRequest when it is missing-with-no-default or wrong."""
    value = req.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AgentError("BadRequest", "%s must be a number, got %s" % (name, _short(value)))
    if isinstance(value, float) and not math.isfinite(value):
        raise AgentError("BadRequest", "%s must be finite, got %s" % (name, value))
    if integer and value != int(value):
        raise AgentError("BadRequest", "%s must be an integer, got %s" % (name, _short(value)))
    if not low <= value <= high:
        raise AgentError("BadRequest", "%s must be in [%s, %s], got %s" % (name, low, high, _short(value)))
    return int(value) if integer else float(value)


def text_field(req, name, default=None, choices=None):
    """A string field (or None when absent and no default), optionally one of `choices`."""
    value = req.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str) or (choices is not None and value not in choices):
        want = "one of %s" % ", ".join(choices) if choices else "a string"
        raise AgentError("BadRequest", "%s must be %s, got %s" % (name, want, _short(value)))
    return value


def lock_timeout(req):
    return number(req, "lock_timeout", DEFAULT_LOCK_TIMEOUT_S, 0.0, 7 * 86400.0)


# ---------------------------------------------------------------- waiting while watching the client

def poll(state, fds, timeout):
    """Wait up to `timeout` for the client's stdin or `fds`; stdin data is queued as lines.
    Returns the readable fds among `fds`."""
    reader = state["reader"]
    watch = list(fds) + ([] if reader.eof else [reader.fd])
    if not watch:
        time.sleep(max(0.0, timeout))
        return []
    ready, _, _ = select.select(watch, [], [], max(0.0, timeout))
    if reader.fd in ready:
        reader.feed(os.read(reader.fd, 1 << 16))
    return [fd for fd in ready if fd != reader.fd]


def _is_bye(line):
    if line is TOO_LONG or b"bye" not in line:
        return False
    try:
        return parse_request(line).get("op") == "bye"
    except AgentError:
        return False


def check_client(state):
    """ClientGone when the client closed our stdin; Cancelled when it said bye meanwhile."""
    reader = state["reader"]
    if reader.eof:
        raise ClientGone()
    if any(_is_bye(line) for line in reader.lines):
        raise AgentError("Cancelled", "the client said bye; the operation was cancelled")


def send(obj):
    """Write one JSON line to the client."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- the device lock

class DeviceLock(object):
    """flock on <cache>/.device.lock: one bench, infer or cache change at a time per device,
    whoever drives it. While held, the file holds JSON naming the holder for those who wait."""

    def __init__(self, cache):
        self.path = os.path.join(cache, LOCK_FILE)
        self.fd = None

    @property
    def held(self):
        return self.fd is not None

    def try_acquire(self, info):
        """Take the lock if it is free (True), recording `info` as the holder."""
        if self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return False
                raise
            self.fd = fd
        data = json.dumps(info).encode()
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, data)
        return True

    def holder(self):
        """The holder record written by whoever holds the lock ({} when unreadable)."""
        try:
            with open(self.path) as fh:
                value = json.loads(fh.read() or "{}")
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def release(self):
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            finally:
                os.close(self.fd)  # closing the descriptor releases the flock
                self.fd = None


def holder_info(state, op, model=None):
    """Who we are, for the lock file: agent pid, client host/pid/user, op and since when."""
    client = state.get("client") or {}
    info = {"agent_pid": os.getpid(), "host": client.get("host"), "client_pid": client.get("pid"),
            "user": client.get("user"), "op": op, "since": time.time()}
    ssh = os.environ.get("SSH_CLIENT", "").split()
    if ssh:
        info["from"] = ssh[0]
    if model:
        info["model"] = model
    return info


def describe_holder(holder):
    """'agent pid 12 for pid 34 on host H (from 10.0.0.2), bench of abc..., since 12:00:01 (5 s ago)'."""
    if not holder:
        return "another agent (holder unknown)"
    who = "agent pid %s" % holder.get("agent_pid", "?")
    if holder.get("client_pid") or holder.get("host"):
        who += " for pid %s on host %s" % (holder.get("client_pid", "?"), holder.get("host") or "?")
    if holder.get("user"):
        who += " (user %s)" % holder["user"]
    if holder.get("from"):
        who += " from %s" % holder["from"]
    what = holder.get("op") or "work"
    if holder.get("model"):
        what += " of %s" % str(holder["model"])[:12]
    since = holder.get("since")
    when = ""
    if isinstance(since, (int, float)):
        when = ", since %s (%.0f s ago)" % (time.strftime("%H:%M:%S", time.localtime(since)), time.time() - since)
    return "%s, %s%s" % (who, what, when)


def acquire_device(state, rid, op, timeout, model=None):
    """Hold the device lock for `op`, waiting up to `timeout` s (the client is told whom it waits
    for); Busy when it stays held. Returns the seconds waited."""
    lock = state["lock"]
    info = holder_info(state, op, model)
    if lock.try_acquire(info):
        return 0.0
    start = time.time()
    holder = lock.holder()
    while not holder and time.time() - start < HOLDER_WRITE_S:  # taken a moment ago: its record is being written
        time.sleep(0.01)
        if lock.try_acquire(info):
            return time.time() - start
        holder = lock.holder()
    send({"id": rid, "event": "waiting", "holder": holder,
          "message": "waiting for the device, held by %s" % describe_holder(holder)})
    while True:
        remaining = start + timeout - time.time()
        if remaining <= 0:
            raise AgentError("Busy", "the device is busy: held by %s; gave up after waiting %.0f s"
                             % (describe_holder(lock.holder() or holder), timeout))
        poll(state, [], min(LOCK_POLL_S, remaining))
        check_client(state)
        info["since"] = time.time()
        if lock.try_acquire(info):
            return time.time() - start


def settle(state):
    """Release the device lock once nothing of ours runs: no request, no child still importing."""
    lock = state["lock"]
    if not lock.held:
        return
    for runtime, proc in list(state["warm"].items()):
        if not getattr(proc, "ready", False):
            if proc.poll() is not None or time.time() - proc.spawned > READY_TIMEOUT_S:
                discard(state["warm"].pop(runtime))
                continue
            return
    lock.release()


# ---------------------------------------------------------------- content-addressed cache (LRU)

def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(value):
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise AgentError("BadRequest", "sha256 must be 64 lowercase hex digits, got %s" % _short(value))
    return value


def _check_ext(value):
    if value not in (".onnx", ".tflite", ".bin", ".npy"):
        raise AgentError("BadRequest", "ext must be .onnx, .tflite, .bin or .npy, got %s" % _short(value))
    return value


def cache_path(state, req):
    """Path of the cached file named by the request's sha256 and ext."""
    return os.path.join(state["cache"], _check_sha(req.get("sha256")) + _check_ext(req.get("ext", ".bin")))


def touch(path):
    """Mark a cached file as just used (its mtime orders the least-recently-used eviction)."""
    try:
        os.utime(path, None)
    except OSError:
        pass


def cache_entries(cache):
    """[(last use, bytes, path)] of the cached files, least recently used first."""
    found = []
    for name in os.listdir(cache):
        if CACHE_NAME.match(name):
            path = os.path.join(cache, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            found.append((st.st_mtime, st.st_size, path))
    return sorted(found)


def cache_usage(state):
    entries = cache_entries(state["cache"])
    return {"files": len(entries), "bytes": sum(e[1] for e in entries), "max_bytes": state["cache_max_bytes"]}


def _remove_stale_uploads(cache):
    now = time.time()
    for name in os.listdir(cache):
        if name.endswith(".part") or name.startswith(".put-"):
            path = os.path.join(cache, name)
            try:
                if now - os.stat(path).st_mtime > STALE_UPLOAD_S:
                    os.remove(path)
            except OSError:
                pass


def evict(state, keep=(), room=0):
    """Remove least recently used files until the cache plus `room` bytes fits the cap; only
    under the device lock (taken here if free: eviction is skipped while another agent works)."""
    if not state["lock"].try_acquire(holder_info(state, "evict")):
        return []
    entries = cache_entries(state["cache"])
    total = sum(e[1] for e in entries) + room
    removed = []
    for _, size, path in entries:
        if total <= state["cache_max_bytes"]:
            break
        if path in keep:
            continue
        try:
            os.remove(path)
        except OSError:
            continue
        total -= size
        removed.append(os.path.basename(path))
    _remove_stale_uploads(state["cache"])
    return removed


def forget(state, path):
    """Drop a model from the cache (it did not fit: keeping it only fills the device)."""
    state["runners"] = dict((k, v) for k, v in state["runners"].items() if k[0] != path)
    try:
        os.remove(path)
        return True
    except OSError:
        return False


def op_put(state, req):
    """Register (and verify) a file in the cache; small files may come inline as base64."""
    path = cache_path(state, req)
    if req.get("data_b64") is not None:
        if not isinstance(req["data_b64"], str):
            raise AgentError("BadRequest", "data_b64 must be a base64 string")
        try:
            data = base64.b64decode(req["data_b64"].encode("ascii"), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise AgentError("BadRequest", "data_b64 is not base64: %s" % exc)
        fd, tmp = tempfile.mkstemp(dir=state["cache"], prefix=".put-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    if not os.path.exists(path):
        room = number(req, "bytes", 0, 0, float(1 << 50), integer=True)
        return {"present": False, "path": path, "evicted": evict(state, room=room) if room else []}
    actual = _sha256(path)
    if actual != req["sha256"]:
        os.remove(path)
        raise AgentError("ChecksumMismatch", "cached file %s has sha256 %s, expected %s; removed it"
                         % (path, actual, req["sha256"]))
    touch(path)
    return {"present": True, "path": path, "bytes": os.path.getsize(path), "evicted": evict(state, keep=(path,))}


def require_cached(state, req):
    """Path of a cached model, or NotFound telling the client to put it first."""
    path = cache_path(state, req)
    if not os.path.exists(path):
        raise AgentError("NotFound", "model %s is not in the device cache; put it first" % req["sha256"][:12])
    return path


def op_clean(state, req):
    """Empty the device cache (under the device lock: never under someone's measurement)."""
    acquire_device(state, req.get("id"), "clean", lock_timeout(req))
    state["runners"] = {}
    removed, freed = 0, 0
    for name in os.listdir(state["cache"]):
        path = os.path.join(state["cache"], name)
        if name == LOCK_FILE or (os.path.isdir(path) and not os.path.islink(path)):
            continue
        try:
            size = os.path.getsize(path)
            os.remove(path)
        except OSError:
            continue
        removed += 1
        freed += size
    return {"removed": removed, "freed_bytes": freed}


# ---------------------------------------------------------------- runtimes

def _import_tflite(module):
    """The Interpreter class of the TFLite runtime module found on this device."""
    import importlib
    mod = importlib.import_module(module)
    return mod.Interpreter


class OrtRunner(object):
    """Runs an ONNX model with onnxruntime on the CPU with an explicit thread count."""

    def __init__(self, path, threads):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise _load_error(exc, path)
        self.inputs = self.sess.get_inputs()
        self.names = [i.name for i in self.inputs]

    def input_specs(self):
        """[(shape with None for dynamic dims, numpy dtype)] per input."""
        import numpy as np
        specs = []
        for i in self.inputs:
            shape = [d if isinstance(d, int) and d > 0 else None for d in i.shape]
            specs.append((shape, _ort_dtype(i.type, np)))
        return specs

    def run(self, arrays):
        return self.sess.run(None, dict(zip(self.names, arrays)))

    def to_model(self, arrays):
        """The inputs in the model's dtypes."""
        return [a.astype(spec[1], copy=False) for a, spec in zip(arrays, self.input_specs())]

    def to_float(self, outputs):
        return outputs


def _ort_dtype(type_str, np):
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    return table.get(type_str, np.float32)


class TfliteRunner(object):
    """Runs a .tflite model with the TFLite interpreter found on the device."""

    def __init__(self, path, threads, module):
        Interpreter = _import_tflite(module)
        try:
            self.interp = Interpreter(model_path=path, num_threads=int(threads))
            self.interp.allocate_tensors()
        except Exception as exc:
            raise _load_error(exc, path)
        self.inputs = self.interp.get_input_details()
        self.outputs = self.interp.get_output_details()

    def input_specs(self):
        specs = []
        for d in self.inputs:
            sig = d.get("shape_signature", d["shape"])
            specs.append(([int(x) if int(x) > 0 else None for x in sig], d["dtype"]))
        return specs

    def run(self, arrays):
        for detail, arr in zip(self.inputs, arrays):
            if tuple(detail["shape"]) != tuple(arr.shape):
                self.interp.resize_tensor_input(detail["index"], list(arr.shape))
                self.interp.allocate_tensors()
                self.inputs = self.interp.get_input_details()
                self.outputs = self.interp.get_output_details()
        for detail, arr in zip(self.inputs, arrays):
            self.interp.set_tensor(detail["index"], arr)
        self.interp.invoke()
        return [self.interp.get_tensor(d["index"]) for d in self.outputs]

    def to_model(self, arrays):
        """The inputs in the model's dtypes; float data for an int8 input is quantized with its scale."""
        import numpy as np
        result = []
        for detail, arr in zip(self.inputs, arrays):
            dtype = np.dtype(detail["dtype"])
            scale, zero = detail.get("quantization", (0.0, 0))
            if np.issubdtype(dtype, np.integer) and np.issubdtype(arr.dtype, np.floating) and scale:
                info = np.iinfo(dtype)
                arr = np.clip(np.round(arr / scale + zero), info.min, info.max)
            result.append(arr.astype(dtype, copy=False))
        return result

    def to_float(self, outputs):
        """Outputs as float32; an int8 output is dequantized with its scale and zero point."""
        import numpy as np
        result = []
        for detail, out in zip(self.outputs, outputs):
            scale, zero = detail.get("quantization", (0.0, 0))
            if np.issubdtype(out.dtype, np.integer) and scale:
                out = ((out.astype(np.float32) - zero) * scale).astype(np.float32)
            result.append(out)
        return result


def _allocation_failed(exc, text):
    return isinstance(exc, MemoryError) or "bad_alloc" in text or "Failed to allocate" in text


def _run_error(exc):
    """A failure while running a loaded model: OutOfMemory when an allocation failed, else RunFailed."""
    text = "%s: %s" % (type(exc).__name__, str(exc).strip())
    if _allocation_failed(exc, text):
        return AgentError("OutOfMemory", "out of memory while running the model: %s" % text[:300])
    return AgentError("RunFailed", "the runtime failed running the model: %s" % text[:300])


def _load_error(exc, path):
    """Map a runtime's load failure to OutOfMemory or BadModel."""
    text = "%s: %s" % (type(exc).__name__, exc)
    if _allocation_failed(exc, text):
        return AgentError("OutOfMemory", "out of memory while loading %s: %s" % (os.path.basename(path), text[:300]))
    return AgentError("BadModel", "cannot load %s: %s" % (os.path.basename(path), text.splitlines()[0][:300] if text else ""))


def runtimes_of(state):
    """available_runtimes(), looked up once per agent (the metadata scan is not free)."""
    if state.get("runtimes") is None:
        state["runtimes"] = available_runtimes()
    return state["runtimes"]


def open_runner(path, runtime, threads, runtimes=None):
    """A runner for the model at `path` with the requested runtime."""
    if runtimes is None:
        runtimes = available_runtimes()
    want = runtime or ("tflite" if path.endswith(".tflite") else "onnxruntime")
    if want not in runtimes:
        have = ", ".join(sorted(runtimes)) or "none"
        raise AgentError("NoRuntime", "runtime %s is not installed on this device (found: %s)" % (want, have))
    if want == "onnxruntime":
        return OrtRunner(path, threads)
    return TfliteRunner(path, threads, runtimes["tflite"]["module"])


# ---------------------------------------------------------------- layout of inputs

def _fits(shape, spec):
    return len(shape) == len(spec) and all(s is None or s == d for d, s in zip(shape, spec))


def arrange_input(arr, spec_shape):
    """Return `arr` (NCHW) in the model's layout: unchanged, or transposed to NHWC."""
    import numpy as np
    arr = np.asarray(arr)
    batchless = [None] + list(spec_shape[1:])
    if _fits(arr.shape, batchless):
        return arr
    if arr.ndim == 4 and _fits(np.transpose(arr, (0, 2, 3, 1)).shape, batchless):
        return np.ascontiguousarray(np.transpose(arr, (0, 2, 3, 1)))
    want = ["?" if s is None else s for s in spec_shape]
    raise AgentError("BadInput", "input shape %s does not match the model's input %s (NCHW or NHWC)"
                     % (list(arr.shape), want))


def run_batch(runner, arrays):
    """Run float inputs of any batch size (one sample at a time when the model's batch is fixed);
    float outputs. int8 inputs and outputs are (de)quantized with the tensors' own parameters."""
    import numpy as np
    specs = runner.input_specs()
    arranged = runner.to_model([arrange_input(a, s[0]) for a, s in zip(arrays, specs)])
    batch = arranged[0].shape[0]
    fixed = specs[0][0][0]
    if fixed is None or fixed == batch:
        return runner.to_float(runner.run(arranged))
    parts = [runner.to_float(runner.run([a[i:i + 1] for a in arranged])) for i in range(batch)]
    return [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(parts[0]))]


def synthetic_inputs(runner, seed=0):
    """Random inputs of the model's shapes (dynamic dims as 1) for benchmarking."""
    import numpy as np
    rng = np.random.RandomState(seed)
    arrays = []
    for shape, dtype in runner.input_specs():
        dims = [d if d is not None else 1 for d in shape]
        if np.issubdtype(np.dtype(dtype), np.integer):
            arrays.append(rng.randint(0, 4, size=dims).astype(dtype))
        else:
            arrays.append(rng.standard_normal(dims).astype(dtype))
    return arrays


# ---------------------------------------------------------------- memory accounting

def _status_kb(key):
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def memory_baseline():
    """(baseline_kb, method): current RSS, with the high-water mark reset where Linux allows."""
    rss = _status_kb("VmRSS")
    if rss is not None:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            return rss, "VmHWM-baseline"
        except OSError:
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss-baseline"


def memory_peak_kb(method):
    """Peak RSS in kB read the way `method` says."""
    if method == "VmHWM-baseline":
        return _status_kb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------- bench (child process)

def _run_once(runner, arrays, cpu):
    """Run once; (wall seconds, process CPU seconds or None)."""
    c0 = time.process_time() if cpu else None
    t0 = time.perf_counter()
    runner.run(arrays)
    t1 = time.perf_counter()
    return t1 - t0, (time.process_time() - c0) if cpu else None


def cpu_shares_of_wall(cpus, wall, cpu, share=1.0):
    """Under a CFS quota: each run's CPU time times the loop's wall time per CPU second (`wall`
    and `cpu` over the whole loop, stalls included: the kernel throttles at a syscall, so often
    between runs, outside any one run's timer). A single run under a quota shows full speed or
    a stall; its CPU time does not see the quota's phase, and the scaled times still add up to
    the wall time the slower CPU took. Returns (times, wall/cpu), or (None, None) when the
    loop used under half its `share` (quota / period) of the CPU: not CPU-bound (it waited on
    something), so its wall times are the better account."""
    if cpu < 0.5 * share * wall:
        return None, None
    scale = wall / cpu
    return [c * scale for c in cpus], scale


class _Clocks(object):
    """Wall and process CPU time since creation (the whole timed loop)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def spent(self):
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def _timed_runs(runner, arrays, min_runs, min_seconds, max_seconds, share=0.0):
    """Run until both min_runs and min_seconds are reached (or max_seconds passes); returns
    (per-run seconds, wall/CPU scale). With a `share` (under a CFS quota: quota / period) the
    times are `cpu_shares_of_wall`; without, they are wall times and the scale is None."""
    cpu = share > 0
    walls, cpus = [], []
    clocks = _Clocks()
    while True:
        wall, used = _run_once(runner, arrays, cpu)
        walls.append(wall)
        cpus.append(used)
        elapsed = clocks.spent()[0]
        if (len(walls) >= min_runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    if cpu:
        times, scale = cpu_shares_of_wall(cpus, *clocks.spent(), share=share)
        if times is not None:
            return times, scale
    return walls, None


def _alternating_runs(first, second, min_runs, min_seconds, max_seconds, share=0.0):
    """Blocks of about BLOCK_S of each runner in turn, until both reach min_runs and
    min_seconds. With a `share`, both sides' runs share out the wall time of the whole loop by
    their CPU time (`cpu_shares_of_wall`), so the A/B ratio is their CPU times' ratio. Returns
    (first's times, second's times, wall/CPU scale or None)."""
    cpu = share > 0
    walls, cpus = ([], []), ([], [])
    clocks = _Clocks()
    while True:
        for side, (runner, arrays) in enumerate((first, second)):
            block_start = time.perf_counter()
            while True:
                wall, used = _run_once(runner, arrays, cpu)
                walls[side].append(wall)
                cpus[side].append(used)
                if time.perf_counter() - block_start >= BLOCK_S:
                    break
        done = all(len(w) >= min_runs and sum(w) >= min_seconds for w in walls)
        if done or clocks.spent()[0] >= max_seconds:
            break
    if cpu:
        both, scale = cpu_shares_of_wall(cpus[0] + cpus[1], *clocks.spent(), share=share)
        if both is not None:
            return both[:len(walls[0])], both[len(walls[0]):], scale
    return walls[0], walls[1], None


def _preimport(module):
    """Import numpy and the runtime before the baseline is read: their cost is not the model's."""
    import importlib
    importlib.import_module("numpy")
    if module:
        importlib.import_module(module)


def bench_child(spec):
    """Load one model, warm up, time the counted runs; runs in its own process."""
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")  # under a memory limit, the OOM killer should pick us, not the agent
    except OSError:
        pass
    runtime = spec.get("runtime")
    runtimes = {runtime: {"module": spec.get("module"), "version": None}}
    baseline_kb, method = memory_baseline()
    t0 = time.perf_counter()
    runner = open_runner(spec["path"], runtime, spec["threads"], runtimes)
    arrays = synthetic_inputs(runner)
    runner.run(arrays)  # first run: allocations belong to load, as benchmark_model reports them
    load_ms = (time.perf_counter() - t0) * 1000.0
    max_s = float(spec.get("max_seconds", 120.0))
    quota = cpu_quota()
    share = quota[0] / float(quota[1]) if quota else 0.0
    warm, _ = _timed_runs(runner, arrays, int(spec["warmup"]), float(spec["warmup_seconds"]), max_s)
    result = {"warmup_runs": len(warm), "load_ms": load_ms, "baseline_mb": baseline_kb / 1024.0,
              "memory_method": method, "input_shapes": [list(a.shape) for a in arrays]}
    if spec.get("against_path"):
        peak_kb = memory_peak_kb(method)  # this model's alone: the other one is not loaded yet
        t1 = time.perf_counter()
        other = open_runner(spec["against_path"], runtime, spec["threads"], runtimes)
        other_arrays = synthetic_inputs(other)
        other.run(other_arrays)
        result["against_load_ms"] = (time.perf_counter() - t1) * 1000.0
        _timed_runs(other, other_arrays, int(spec["warmup"]), float(spec["warmup_seconds"]), max_s)
        times, result["against_times_s"], scale = _alternating_runs(
            (runner, arrays), (other, other_arrays), int(spec["runs"]), float(spec["min_seconds"]), max_s, share)
    else:
        times, scale = _timed_runs(runner, arrays, int(spec["runs"]), float(spec["min_seconds"]), max_s, share)
        peak_kb = memory_peak_kb(method)
    if quota:
        result["timing"] = {"method": "cpu-share", "cfs_quota_us": quota[0], "cfs_period_us": quota[1],
                            "wall_per_cpu": scale}
    result.update(times_s=times, peak_memory_mb=max(0.0, (peak_kb - baseline_kb) / 1024.0),
                  wall_s=time.perf_counter() - t0)
    return result


def _name_process(name):
    """Show what a bench process is doing in ps/top (its comm: at most 15 characters)."""
    try:
        with open("/proc/self/comm", "w") as fh:
            fh.write(name[:15])
    except OSError:
        pass


def child_main(module):
    """Entry of the fresh bench process: imports first, then one JSON spec on stdin, one reply on stdout."""
    _watch_parent(os.getppid(), lambda: None)
    try:
        _preimport(module)
    except Exception:
        pass  # the runner's own import reports it as the bench's error
    _name_process("edgeprune-ready")
    sys.stdout.write(READY_LINE)  # the agent waits for this, so no import overlaps a measurement
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # a pre-started child that was never used
    _name_process("edgeprune-bench")
    spec = json.loads(line)
    try:
        reply = {"ok": True, "result": bench_child(spec)}
    except AgentError as exc:  # from loading: BadModel, OutOfMemory, NoRuntime
        reply = {"ok": False, "error": {"type": exc.kind, "message": str(exc)}}
    except MemoryError:
        reply = {"ok": False, "error": {"type": "OutOfMemory", "message": "out of memory while benchmarking"}}
    except Exception as exc:  # the model loaded: a failure now is the runtime's, not the model file's
        err = _run_error(exc)
        reply = {"ok": False, "error": {"type": err.kind, "message": str(err)}}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip the runtime's interpreter teardown: it can take longer than the bench


# ---------------------------------------------------------------- bench (the agent's side)

def _bench_spec(state, req):
    path = require_cached(state, req)
    runtime = text_field(req, "runtime", None, ("onnxruntime", "tflite")) or (
        "tflite" if path.endswith(".tflite") else "onnxruntime")
    runtimes = runtimes_of(state)
    if runtime not in runtimes:
        open_runner(path, runtime, 1, runtimes)  # raises NoRuntime with the list of runtimes found
    against = req.get("against")
    if against is not None:
        if not isinstance(against, dict):
            raise AgentError("BadRequest", "against must be {\"sha256\", \"ext\"}")
        against = require_cached(state, against)
    return {"path": path, "against_path": against, "runtime": runtime, "module": runtimes[runtime]["module"],
            "threads": number(req, "threads", 1, 1, 1024, integer=True),
            "warmup": number(req, "warmup", 1, 0, 10 ** 7, integer=True),
            "warmup_seconds": number(req, "warmup_seconds", 0.5, 0.0, 86400.0),
            "runs": number(req, "runs", 50, 1, 10 ** 7, integer=True),
            "min_seconds": number(req, "min_seconds", 1.0, 0.0, 86400.0),
            "max_seconds": number(req, "max_seconds", 120.0, 0.001, 7 * 86400.0)}


def _spawn_child(module):
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--bench-child", module or ""],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.spawned = time.time()
    proc.seen = b""
    return proc


def prewarm(state, runtime):
    """Start a bench child for `runtime` that imports numpy and the runtime, then waits for its spec.
    Only under the device lock: its imports must not overlap another agent's measurement."""
    found = runtimes_of(state).get(runtime) if isinstance(runtime, str) else None
    proc = state["warm"].get(runtime)
    if found is None or (proc is not None and proc.poll() is None):
        return
    if not state["lock"].try_acquire(holder_info(state, "prewarm")):
        return  # the bench will start its child under the lock instead
    state["warm"][runtime] = _spawn_child(found["module"])


def _wait_ready(proc, timeout):
    """Read the child's ready line; False when it died, or is not ready within `timeout`."""
    if getattr(proc, "ready", False):
        return True
    fd, deadline = proc.stdout.fileno(), time.time() + timeout
    while b"\n" not in proc.seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            return False
        chunk = os.read(fd, 256)
        if not chunk:
            return False
        proc.seen += chunk
    proc.ready = True
    return True


def _close_pipes(proc):
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass


def discard(proc):
    """Kill a child (if alive), reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    _close_pipes(proc)


def _take_child(state, spec):
    """A ready child for the spec's runtime (pre-started or new); other pre-started children
    finish their imports first, so none of them competes with the measurement for the CPU."""
    for runtime, proc in list(state["warm"].items()):
        if not _wait_ready(proc, READY_TIMEOUT_S):
            discard(state["warm"].pop(runtime))
    proc = state["warm"].pop(spec["runtime"], None) or _spawn_child(spec["module"])
    if not _wait_ready(proc, READY_TIMEOUT_S):
        discard(proc)
        raise AgentError("BenchCrashed", "the bench process did not start")
    return proc


def stop_children(state):
    """End the pre-started children (they also exit on stdin EOF or when the agent dies)."""
    for proc in list(state["warm"].values()):
        discard(proc)
    state["warm"] = {}


def _proc_peak_mb(pid):
    """Peak resident memory of a process so far (VmHWM, MB), 0.0 once it is gone."""
    text = _read("/proc/%d/status" % pid) or ""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _run_child(state, proc, spec, timeout):
    """Give the child its spec and collect its output until it exits, watching the client:
    ClientGone or Cancelled kill the child at once. Returns (stdout, stderr tail, exit, peak MB)."""
    state["child"] = proc
    out, err, peak = bytearray(), bytearray(), 0.0
    try:
        try:
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            proc.stdin.close()
        except OSError:
            pass  # it died already: its exit status says how
        pipes = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        deadline = time.time() + timeout
        while pipes:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise AgentError("Timeout", "bench did not finish within %.0f s" % timeout)
            for fd in poll(state, list(pipes), min(0.2, remaining)):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    del pipes[fd]
                    continue
                pipes[fd] += chunk
                if len(err) > STDERR_KEEP:
                    del err[:len(err) - STDERR_KEEP]
            peak = max(peak, _proc_peak_mb(proc.pid))
            check_client(state)
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            raise AgentError("Timeout", "the bench process closed its output but did not exit within %.0f s" % timeout)
    except BaseException:
        discard(proc)
        raise
    finally:
        state["child"] = None
        _close_pipes(proc)
    return bytes(out), bytes(err), proc.returncode, peak


def _signal_name(number_):
    try:
        return signal.Signals(number_).name
    except ValueError:
        return "signal %d" % number_


def _crash_error(state, spec, returncode, err, before, peak):
    """The AgentError for a bench process that ended without a reply."""
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:]
    said = ": %s" % tail[0][:300] if tail else " (it printed nothing)"
    if returncode >= 0:
        return AgentError("BenchCrashed", "the bench process exited with status %d without a result%s"
                          % (returncode, said))
    sig = -returncode
    if sig == signal.SIGKILL:
        after = memory_events()
        if not killed_for_memory(before, after, peak):
            time.sleep(0.05)  # the kernel counts the kill right after sending it; read once more
            after = memory_events()
        if killed_for_memory(before, after, peak):
            return _oom(state, spec, "the bench process was killed by the kernel's out-of-memory killer "
                        "at %.0f MB%s" % (peak, _limit_text(before)))
        why = ("the memory cgroup's oom_kill count did not change" if before.get("cgroup_oom_kill") is not None
               else "no out-of-memory kill was recorded")
        return AgentError("BenchCrashed", "the bench process was killed by SIGKILL, not for memory (%s)" % why)
    return AgentError("BenchCrashed", "the bench process was killed by %s%s" % (_signal_name(sig), said))


def _limit_text(events):
    limit = events.get("limit_mb")
    return " (memory limit %.0f MB)" % limit if limit else ""


def _oom(state, spec, message):
    """OutOfMemory, after removing the models that did not fit from the cache."""
    gone = [forget(state, p) for p in (spec["path"], spec.get("against_path")) if p]
    note = "; removed the model from the device cache" if any(gone) else ""
    return AgentError("OutOfMemory", "%s%s" % (message, note))


def _child_result(state, spec, out, err, returncode, before, peak):
    """The child's result, or the AgentError saying why there is none."""
    lines = [l for l in out.decode("utf-8", "replace").splitlines()
             if l.startswith("{") and l != READY_LINE.strip()]
    if not lines:
        raise _crash_error(state, spec, returncode, err, before, peak)
    reply = json.loads(lines[-1])
    if not reply.get("ok"):
        kind, message = reply["error"]["type"], reply["error"]["message"]
        if kind == "OutOfMemory":
            raise _oom(state, spec, message)
        raise AgentError(kind, message)
    return reply["result"]


def _bench_cached_paths(state, spec):
    """After taking the lock: the models must still be there (another agent may have evicted them)."""
    for path in (spec["path"], spec.get("against_path")):
        if path and not os.path.exists(path):
            raise AgentError("NotFound", "model %s is not in the device cache; put it first"
                             % os.path.basename(path)[:12])
        if path:
            touch(path)


def op_bench(state, req):
    """Benchmark a cached model in a fresh child process, under the device lock; throttling read
    before and after, the kernel's memory events before and after."""
    spec = _bench_spec(state, req)
    timeout = number(req, "timeout_s", 300.0, 0.001, 7 * 86400.0)
    waited = acquire_device(state, req.get("id"), "bench", lock_timeout(req), model=req.get("sha256"))
    _bench_cached_paths(state, spec)
    throttle_before = throttled_state()
    before = memory_events()
    started, t0 = time.time(), time.perf_counter()
    proc = _take_child(state, spec)
    t1 = time.perf_counter()
    try:
        out, err, code, peak = _run_child(state, proc, spec, timeout)
    except AgentError as exc:
        if exc.kind != "Cancelled":
            prewarm(state, spec["runtime"])
        raise
    prewarm(state, spec["runtime"])  # the next bench of this runtime finds its child ready
    result = _child_result(state, spec, out, err, code, before, peak)
    result.update(throttled_before=throttle_before, throttled_after=throttled_state(), runtime=spec["runtime"],
                  runtime_version=runtimes_of(state)[spec["runtime"]]["version"], started_at=started,
                  ended_at=time.time(), lock_wait_s=waited,
                  agent_s={"wait_for_child": t1 - t0, "child": time.perf_counter() - t1})
    return result


# ---------------------------------------------------------------- infer

def _load_npy(b64):
    import numpy as np
    if not isinstance(b64, str):
        raise AgentError("BadInput", "an input is a base64 .npy string")
    try:
        return np.load(io.BytesIO(base64.b64decode(b64.encode("ascii"), validate=True)), allow_pickle=False)
    except Exception as exc:
        raise AgentError("BadInput", "input is not a valid .npy array: %s" % str(exc)[:200])


def _dump_npy(arr):
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def op_infer(state, req):
    """Run the model on the given NCHW inputs (under the device lock) and return the outputs as .npy."""
    path = require_cached(state, req)
    runtime = text_field(req, "runtime", None, ("onnxruntime", "tflite"))
    threads = number(req, "threads", 1, 1, 1024, integer=True)
    inputs = req.get("inputs", [])
    if not isinstance(inputs, list):
        raise AgentError("BadInput", "inputs must be a list of base64 .npy arrays")
    acquire_device(state, req.get("id"), "infer", lock_timeout(req), model=req.get("sha256"))
    if not os.path.exists(path):
        raise AgentError("NotFound", "model %s is not in the device cache; put it first" % req["sha256"][:12])
    touch(path)
    key = (path, runtime, threads)
    runner = state["runners"].get(key)
    if runner is None:
        try:
            runner = open_runner(path, runtime, threads, runtimes_of(state))
        except AgentError as exc:
            if exc.kind == "OutOfMemory":
                raise _oom(state, {"path": path}, str(exc))
            raise
        state["runners"] = {key: runner}  # keep one model loaded, not all of them
    arrays = [_load_npy(b) for b in inputs]
    if len(arrays) != len(runner.input_specs()):
        raise AgentError("BadInput", "the model takes %d input(s), got %d" % (len(runner.input_specs()), len(arrays)))
    try:
        outputs = run_batch(runner, arrays)
    except AgentError:
        raise
    except Exception as exc:
        raise _run_error(exc)
    return {"outputs": [_dump_npy(o) for o in outputs]}


# ---------------------------------------------------------------- hello

def op_hello(state, req):
    """Identify the device and its runtimes; remember who the client is (for the lock file)."""
    client = req.get("client")
    if client is not None:
        if not isinstance(client, dict):
            raise AgentError("BadRequest", "client must be {\"host\", \"pid\", \"user\"}")
        state["client"] = dict((k, client[k]) for k in ("host", "pid", "user")
                               if isinstance(client.get(k), (str, int)) and not isinstance(client.get(k), bool))
    names = req.get("prewarm") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise AgentError("BadRequest", "prewarm must be a list of runtime names")
    runtimes = runtimes_of(state)
    for name in names:
        prewarm(state, name)
    reply = {
        "protocol": PROTOCOL_VERSION,
        "runtimes": dict((k, v["version"]) for k, v in runtimes.items()),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "cache_dir": state["cache"],
        "cache": cache_usage(state),
        "pid": os.getpid(),
        "agent": agent_usage(),
        "limits": {"max_line_bytes": MAX_LINE_BYTES, "max_depth": MAX_DEPTH},
        "features": ["paired_bench", "device_lock", "events", "clean", "cache_lru"],
    }
    throttled = throttled_state()
    if throttled is not None:
        reply["throttled"] = throttled
    mode = nvpmodel_mode()
    if mode is not None:
        reply["nvpmodel"] = mode
    return reply


# ---------------------------------------------------------------- main loop

OPS = {"hello": op_hello, "put": op_put, "bench": op_bench, "infer": op_infer, "clean": op_clean}


def _error(rid, kind, message):
    return {"id": rid, "ok": False, "error": {"type": kind, "message": message}}


def _request_id(req):
    rid = req.get("id")
    if rid is None or (isinstance(rid, int) and not isinstance(rid, bool)) or (isinstance(rid, str) and len(rid) <= 200):
        return rid
    raise AgentError("BadRequest", "id must be an integer or a short string, got %s" % _short(rid))


def handle(state, req):
    """One reply dict for one request dict; every exception but ClientGone becomes an error reply."""
    rid = None
    try:
        rid = _request_id(req)
        op = req.get("op")
        if not isinstance(op, str):
            raise AgentError("BadRequest", "a request is a JSON object with an op (a string)")
        proto = req.get("protocol")
        if proto is not None and proto != PROTOCOL_VERSION:
            raise AgentError("ProtocolMismatch", "client speaks protocol %s, this agent speaks %d; "
                             "upload the matching agent.py" % (_short(proto), PROTOCOL_VERSION))
        if op == "bye":
            state["running"] = False
            return {"id": rid, "ok": True}
        if op not in OPS:
            raise AgentError("BadRequest", "unknown op %s" % _short(op))
        reply = OPS[op](state, req)
    except ClientGone:
        raise
    except AgentError as exc:
        return _error(rid, exc.kind, str(exc))
    except Exception as exc:
        return _error(rid, "Internal", "%s: %s" % (type(exc).__name__, str(exc)[:300]))
    reply.update({"id": rid, "ok": True})
    return reply


def answer(state, line):
    """Parse, handle and answer one request line (TOO_LONG included); never raises but ClientGone."""
    if line is TOO_LONG:
        reply = _error(None, "BadRequest", "request line longer than %d bytes; large payloads go as files "
                       "(SFTP or adb push, then put)" % MAX_LINE_BYTES)
    else:
        try:
            reply = handle(state, parse_request(line))
        except AgentError as exc:
            reply = _error(None, exc.kind, str(exc))
    try:
        text = json.dumps(reply)
    except Exception as exc:
        text = json.dumps(_error(reply.get("id"), "Internal", "reply not serializable: %s" % str(exc)[:200]))
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    settle(state)


def _watch_parent(parent, before_exit):
    """Exit when our parent goes away (the client's session closed without EOF)."""
    def loop():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                before_exit()
                os._exit(3)
    t = threading.Thread(target=loop)
    t.daemon = True
    t.start()


def _kill_children(state):
    """SIGKILL the running bench process and the pre-started ones (from a signal handler or thread)."""
    for proc in list(state["warm"].values()) + [state.get("child")]:
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass


def _parse_args(argv):
    args = {"cache": os.path.join(os.path.expanduser("~"), ".cache", "edgeprune-agent"), "idle": 600.0,
            "prewarm": [], "cache_max_mb": DEFAULT_CACHE_MAX_MB}
    i = 0
    while i < len(argv):
        if argv[i] == "--cache":
            args["cache"] = argv[i + 1]
        elif argv[i] == "--idle-timeout":
            args["idle"] = float(argv[i + 1])
        elif argv[i] == "--prewarm":
            args["prewarm"].append(argv[i + 1])
        elif argv[i] == "--cache-max-mb":
            args["cache_max_mb"] = float(argv[i + 1])
        i += 2
    return args


def serve(cache, idle_timeout, prewarm_runtimes=(), cache_max_mb=DEFAULT_CACHE_MAX_MB):
    """Answer requests from stdin until bye, EOF, parent death, SIGTERM/SIGHUP or idle timeout."""
    if not os.path.isdir(cache):
        os.makedirs(cache)
    state = {"cache": cache, "running": True, "runners": {}, "warm": {}, "runtimes": None, "child": None,
             "client": None, "lock": DeviceLock(cache), "cache_max_bytes": int(cache_max_mb * 1024 * 1024),
             "reader": LineReader(sys.stdin.fileno(), MAX_LINE_BYTES)}

    def on_signal(signum, frame):
        _kill_children(state)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    _watch_parent(os.getppid(), lambda: _kill_children(state))
    for runtime in prewarm_runtimes:
        prewarm(state, runtime)
    try:
        return _serve_loop(state, idle_timeout)
    except ClientGone:
        return 0
    finally:
        stop_children(state)
        state["lock"].release()


def _unready(state):
    """{stdout fd: proc} of pre-started children still importing."""
    return dict((p.stdout.fileno(), p) for p in state["warm"].values() if not getattr(p, "ready", False))


def _serve_loop(state, idle_timeout):
    reader = state["reader"]
    last = time.time()
    while state["running"]:
        if reader.lines:
            answer(state, reader.lines.popleft())
            last = time.time()
            continue
        if reader.eof:
            return 0
        settle(state)
        importing = _unready(state)
        for fd in poll(state, list(importing), 1.0):
            _wait_ready(importing[fd], 0.0)  # a child that died while importing: settle() discards it
        if not reader.lines and not reader.eof and time.time() - last > idle_timeout:
            return 0
    return 0


def main(argv):
    if argv[:1] == ["--bench-child"]:
        return child_main(argv[1] if len(argv) > 1 else "")
    args = _parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return serve(args["cache"], args["idle"], args["prewarm"], args["cache_max_mb"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
