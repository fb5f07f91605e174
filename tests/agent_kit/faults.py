"""The fault matrix: each row a scenario against a real sshd (or adb stand-in, or local process)
and a real agent, returning an Outcome: what was expected, what happened, how long until the
error, and what was left behind (processes, files in the device cache, measurement-cache
entries). tests/faults asserts on the outcomes, one test per row; bench/bench_faults.py prints
them as a table.

Processes are found by a marker unique to this run (the workdir, part of every agent's and
bench process's command line), so a scenario never touches processes it did not start.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

from device_agents.client import AgentClient, AgentOptions
from device_agents.ssh import SSHTransport
from edgeprune._io import sha256_file
from edgeprune.targets import emulate
from edgeprune.targets.cache import MeasurementCache
from edgeprune.targets.target import Target
from tests.agent_kit import testing

REPO = Path(__file__).resolve().parents[2]
EDGEPRUNE = Path(sys.executable).with_name("edgeprune")


@dataclass
class Outcome:
    """One row of the matrix."""

    fault: str
    expected: str
    observed: str = ""
    seconds: Optional[float] = None  # from the fault (or the call) to the error
    leftovers: list[str] = field(default_factory=list)
    passed: bool = False
    error: Optional[BaseException] = None
    details: dict[str, Any] = field(default_factory=dict)

    def row(self) -> list[str]:
        secs = "-" if self.seconds is None else f"{self.seconds:.1f}"
        return [self.fault, self.expected, self.observed, secs, ", ".join(self.leftovers) or "none",
                "pass" if self.passed else "FAIL"]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "error"}
        out["error_type"] = type(self.error).__name__ if self.error is not None else None
        return out


def describe(exc: BaseException) -> str:
    """'TypeName: first line of the message'."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


# ---------------------------------------------------------------- processes and leftovers

def processes(marker: str) -> dict[int, str]:
    """{pid: role} of live processes whose command line contains `marker`: 'agent', 'bench' (a
    bench process measuring), 'ready' (a pre-started one) or 'other'."""
    found: dict[int, str] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text()
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z" or not any(marker.encode() in a for a in argv):
            continue
        if comm == "edgeprune-bench":
            found[int(proc.name)] = "bench"
        elif b"--bench-child" in argv:
            found[int(proc.name)] = "ready"
        elif b"--cache" in argv:
            found[int(proc.name)] = "agent"
        else:
            found[int(proc.name)] = "other"
    return found


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """The first truthy value of predicate() within timeout, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def busy_bench(marker: str, timeout: float = 90.0) -> Optional[int]:
    """The pid of the bench process that is measuring (its comm is edgeprune-bench)."""
    return wait_until(lambda: next((p for p, r in processes(marker).items() if r == "bench"), None), timeout)


def gone_within(marker: str, timeout: float) -> tuple[float, list[str]]:
    """(seconds until no process with the marker is left, what is still there after timeout)."""
    start = time.monotonic()
    wait_until(lambda: not processes(marker), timeout)
    left = processes(marker)
    return time.monotonic() - start, [f"{role} pid {pid}" for pid, role in sorted(left.items())]


def kill_later(pid_fn: Callable[[], Any], sig: int = signal.SIGKILL) -> dict[str, Any]:
    """Send `sig` to the pid(s) pid_fn() finds (waiting for them), in a thread; returns a record
    of when and whom it killed."""
    record: dict[str, Any] = {}

    def go() -> None:
        pids = wait_until(pid_fn, 90.0)
        if not pids:
            return
        record["at"] = time.monotonic()
        record["pids"] = pids if isinstance(pids, list) else [pids]
        for pid in record["pids"]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    record["thread"] = thread
    return record


def device_cache_dir(target: Target) -> Path:
    """The agent's cache folder on the emulated (or local) device."""
    workdir = Path(target.workdir)
    if target.transport == "ssh" and not workdir.is_absolute():
        workdir = Path(pwd.getpwnam(emulate.status(target.name)["user"]).pw_dir) / workdir
    elif target.transport == "adb" and not workdir.is_absolute():
        workdir = emulate.state_dir(target.name) / "device" / workdir
    return workdir / "cache"


def cache_files(target: Target) -> list[str]:
    d = device_cache_dir(target)
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []


# ---------------------------------------------------------------- targets for the matrix

def marker(tag: str) -> str:
    """A workdir unique to this process and row, with characters every command must quote."""
    return f"ep-faults-{tag}-{os.getpid()} $x 'q"


def ssh_target(tag: str, memory_mb: int = 1024, **fields: Any) -> Target:
    base = {"name": f"t-faults-{tag}-{os.getpid()}", "transport": "ssh", "workdir": marker(tag),
            "emulation": {"cpu_fraction": 1.0, "memory_mb": memory_mb, "threads": 1}}
    base.update(fields)
    return testing.quick_target(**base)


@contextlib.contextmanager
def emulated(target: Target) -> Iterator[Target]:
    """The target up for the block; afterwards down, and its device folder removed."""
    with testing.emulated(target):
        cache = device_cache_dir(target)
        try:
            yield target
        finally:
            shutil.rmtree(cache.parent, ignore_errors=True)


def plain_ssh(target: Target, **extra: Any) -> Target:
    """A non-emulated ssh profile pointing at the emulated sshd, to vary keys and known_hosts."""
    st = emulate.status(target.name)
    fields = {"name": f"{target.name}-plain", "transport": "ssh", "host": "127.0.0.1", "port": st["port"],
              "user": st["user"], "key": st["key"], "known_hosts": st["known_hosts"], "python": st["python"],
              "workdir": target.workdir}
    fields.update(extra)
    return testing.quick_target(**fields)


def ssh_client(target: Target, **options: Any) -> AgentClient:
    """An AgentClient of its own (as a second host would have) for an emulated ssh target."""
    st = emulate.status(target.name)
    transport = SSHTransport(target.name, host="127.0.0.1", port=st["port"], user=st["user"], key=st["key"],
                             known_hosts=st["known_hosts"], workdir=target.workdir, connect_timeout=10.0,
                             op_timeout=60.0)
    return AgentClient(transport, AgentOptions(python=[st["python"]], **options))


def profile_file(target: Target, folder: Path, **overrides: Any) -> Path:
    """The target as a YAML profile, for the CLI."""
    data = {k: v for k, v in target.to_dict().items() if v not in (None, {}, []) and k != "source_file"}
    data.update(overrides)
    path = folder / f"{target.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGEPRUNE), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO), env=dict(os.environ))


def _cache_count(artifact: Path) -> int:
    return MeasurementCache().count(sha256_file(artifact))


# ---------------------------------------------------------------- rows: processes killed

def killed_sshd(artifact: Path) -> Outcome:
    """The sshd (and all it started) SIGKILLed mid-bench: retried, then one unreachable error."""
    out = Outcome("killed sshd mid-bench", "TargetUnreachableError after 3 attempts, no cache entry")
    target = ssh_target("sshd", min_seconds=3.0, retries=2)
    with emulated(target):
        pid = emulate.status(target.name)["pid"]
        mark = target.workdir
        killed = kill_later(lambda: busy_bench(mark, 60) and [pid] + emulate._descendants(pid))
        try:
            target.measure(artifact, use_cache=True)
            out.observed = "measured (no error)"
        except Exception as exc:
            out.error, out.observed = exc, describe(exc)
            out.seconds = time.monotonic() - killed.get("at", time.monotonic())
        _, out.leftovers = gone_within(mark, 5.0)
    if _cache_count(artifact):
        out.leftovers.append("a measurement-cache entry")
    out.passed = (type(out.error).__name__ == "TargetUnreachableError" and "failed after 3 attempt" in str(out.error)
                  and "\n" not in str(out.error) and not out.leftovers)
    return out


def killed_agent(target: Target, artifact: Path, retries: int) -> Outcome:
    """The agent SIGKILLed mid-bench: retried (retries=1 measures), else one clean error."""
    expected = "measured after a reconnect" if retries else "TargetUnreachableError: failed after 1 attempt"
    out = Outcome(f"killed agent mid-bench (retries={retries})", expected)
    t = dataclasses.replace(target, retries=retries, min_seconds=2.0)
    mark = t.workdir
    before = _cache_count(artifact)
    killed = kill_later(lambda: busy_bench(mark) and [p for p, r in processes(mark).items() if r == "agent"])
    try:
        m = t.measure(artifact, use_cache=False)
        out.observed = f"measured, {m.runs} runs"
        out.details["runs"] = m.runs
    except Exception as exc:
        out.error, out.observed = exc, describe(exc)
        out.seconds = time.monotonic() - killed.get("at", time.monotonic())
    killed["thread"].join(5)
    _, out.leftovers = gone_within(mark, 5.0)
    if _cache_count(artifact) != before:
        out.leftovers.append("a measurement-cache entry")
    ok = out.error is None if retries else (type(out.error).__name__ == "TargetUnreachableError" and
                                             "failed after 1 attempt" in str(out.error))
    out.passed = ok and "pids" in killed and not out.leftovers
    return out


def killed_bench(target: Target, artifact: Path, sig: int, retries: int) -> Outcome:
    """The bench process killed by `sig`, no OOM: a target failure (exit 3), retried."""
    name = signal.Signals(sig).name
    expected = "measured after a retry" if retries else f"BenchCrashedError (exit 3) naming {name}, not OOM"
    out = Outcome(f"bench process killed by {name}, no OOM (retries={retries})", expected)
    t = dataclasses.replace(target, retries=retries, min_seconds=2.0)
    mark = t.workdir
    killed = kill_later(lambda: busy_bench(mark), sig)
    try:
        m = t.measure(artifact, use_cache=False)
        out.observed = f"measured, {m.runs} runs"
    except Exception as exc:
        out.error, out.observed = exc, describe(exc)
        out.seconds = time.monotonic() - killed.get("at", time.monotonic())
    killed["thread"].join(5)
    _, out.leftovers = gone_within(mark, 5.0)
    if retries:
        ok = out.error is None
    else:
        err = out.error
        ok = (err is not None and type(err).__name__ == "TargetUnreachableError" and getattr(err, "exit_code", 0) == 3
              and name in str(err) and "does not fit" not in str(err)
              and type(err.__cause__).__name__ == "BenchCrashedError")
    out.passed = ok and "pids" in killed and not out.leftovers
    return out


def real_oom(artifact: Path) -> Outcome:
    """A model over the memory limit: the kernel OOM-kills the bench; does not fit, and the model
    leaves the device cache."""
    out = Outcome("real OOM (600 MB model, 300 MB cgroup)", "DoesNotFitError (kernel OOM kill), model "
                  "removed from the device cache")
    target = ssh_target("oom", memory_mb=300, bench_timeout=60)
    with emulated(target):
        start = time.monotonic()
        try:
            target.measure(artifact)
            out.observed = "measured (no error)"
        except Exception as exc:
            out.error, out.observed = exc, describe(exc)
        out.seconds = time.monotonic() - start
        left = [f for f in cache_files(target) if f.startswith(sha256_file(artifact))]
        out.leftovers = [f"{f[:12]}... in the device cache" for f in left]
        _, procs = gone_within(target.workdir, 5.0)
        out.leftovers += procs
    if _cache_count(artifact):
        out.leftovers.append("a measurement-cache entry")
    out.passed = (type(out.error).__name__ == "DoesNotFitError" and "out of memory" in str(out.error)
                  and not out.leftovers)
    return out


# ---------------------------------------------------------------- rows: SSH

@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A 127.0.0.1 port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for s in held + [server]:
            s.close()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def root_log() -> Iterator[_Records]:
    """Every log record that reaches the root logger during the block."""
    handler = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def bannerless_port(folder: Path, timeout: float = 2.0) -> Outcome:
    """A port that accepts but never sends a banner: one error after ONE connect timeout (retries
    or not), one line on stderr, no paramiko traceback."""
    out = Outcome("port accepts, never sends an SSH banner", f"TargetUnreachableError after one connect timeout "
                  f"({timeout:g} s), one stderr line")
    with silent_port() as port:
        t = testing.quick_target(name="t-faults-banner", transport="ssh", host="127.0.0.1", port=port, retries=2,
                                 connect_timeout=timeout, known_hosts=str(folder / "kh"))
        start = time.monotonic()
        with root_log() as logs:
            try:
                t.check()
            except Exception as exc:
                out.error, out.observed = exc, describe(exc)
        out.seconds = time.monotonic() - start
        run = cli("targets", "check", str(profile_file(t, folder)))
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    paramiko_logs = [r for r in logs.records if r.name.startswith("paramiko")]
    out.details = {"cli_exit": run.returncode, "cli_stderr": lines, "paramiko_records": len(paramiko_logs)}
    if len(lines) != 1 or "Traceback" in run.stderr:
        out.leftovers.append(f"{len(lines)} stderr lines")
    if paramiko_logs:
        out.leftovers.append(f"{len(paramiko_logs)} paramiko log records")
    out.passed = (type(out.error).__name__ == "TargetUnreachableError" and "banner" in str(out.error)
                  and 0.8 * timeout <= out.seconds <= 1.6 * timeout + 0.5 and run.returncode == 3
                  and not out.leftovers)
    return out


def changed_host_key(target: Target, folder: Path) -> Outcome:
    """known_hosts holds another key for the host: refused at once, never retried, file untouched."""
    out = Outcome("changed host key", "TargetUnreachableError 'does not match', not retried, file untouched")
    other = folder / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    port = emulate.status(target.name)["port"]
    kh = folder / "known_hosts_changed"
    kh.write_text(f"[127.0.0.1]:{port} " + " ".join(other.with_suffix(".pub").read_text().split()[:2]) + "\n")
    before = kh.read_bytes()
    start = time.monotonic()
    try:
        plain_ssh(target, known_hosts=str(kh), retries=2, backoff=1.0).check()
        out.observed = "connected (no error)"
    except Exception as exc:
        out.error, out.observed = exc, describe(exc)
    out.seconds = time.monotonic() - start
    if kh.read_bytes() != before:
        out.leftovers.append("known_hosts changed")
    out.passed = ("does not match" in str(out.error) and type(out.error).__name__ == "TargetUnreachableError"
                  and out.seconds < 1.0 + 5.0 and not out.leftovers)
    return out


def unparsable_known_hosts(target: Target, folder: Path) -> Outcome:
    """Lines paramiko cannot parse are skipped with one warning each (file and line), the good line
    still verifies the host; the CLI prints no traceback and exits 0."""
    out = Outcome("unparsable known_hosts lines", "connects; one warning per bad line naming file:line")
    st = emulate.status(target.name)
    good = Path(st["known_hosts"]).read_text().strip()
    port = st["port"]
    kh = folder / "known_hosts_bad"
    kh.write_bytes(b"# my own comment\n"
                   + b"justonefield\n"
                   + f"[127.0.0.1]:{port} ssh-ed25519 !!!not-base64!!!\n".encode()
                   + b"\xff\xfe binary \x00 junk\n"
                   + b"@cert-authority *.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
                   + f"{good}\n".encode())
    before = kh.read_bytes()
    t = plain_ssh(target, known_hosts=str(kh))
    start = time.monotonic()
    with root_log() as logs:
        try:
            out.details["ok"] = t.check()["reachable"]
            out.observed = "connected"
        except Exception as exc:
            out.error, out.observed = exc, describe(exc)
    out.seconds = time.monotonic() - start
    warnings = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING and "known_hosts" in r.getMessage()]
    run = cli("targets", "check", str(profile_file(t, folder)))
    out.details.update(warnings=warnings, cli_exit=run.returncode, cli_stderr=run.stderr.splitlines())
    out.observed += f", {len(warnings)} warnings (lines {', '.join(w.split(' line ')[1].split(':')[0] for w in warnings)})"
    if kh.read_bytes() != before:
        out.leftovers.append("known_hosts changed")
    if "Traceback" in run.stderr:
        out.leftovers.append("a traceback on stderr")
    out.passed = (out.error is None and len(warnings) == 4 and all(str(kh) in w for w in warnings)
                  and [w.split(" line ")[1].split(":")[0] for w in warnings] == ["2", "3", "4", "5"]
                  and run.returncode == 0 and not out.leftovers)
    return out


def tofu_appends(target: Target, folder: Path) -> Outcome:
    """Trust-on-first-use appends one line and keeps the user's lines (comments too) as they were."""
    out = Outcome("trust-on-first-use", "appends the new host key line, user's lines and comments kept")
    kh = folder / "known_hosts_tofu"
    mine = b"# keys I checked by hand\nother.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n# no newline at the end"
    kh.write_bytes(mine)
    start = time.monotonic()
    try:
        plain_ssh(target, known_hosts=str(kh), trust_on_first_use=True).check()
        plain_ssh(target, known_hosts=str(kh)).check()  # the key is known now
        out.observed = "connected twice"
    except Exception as exc:
        out.error, out.observed = exc, describe(exc)
    out.seconds = time.monotonic() - start
    after = kh.read_bytes()
    added = after[len(mine):].decode(errors="replace")
    out.details = {"added": added}
    out.passed = (out.error is None and after.startswith(mine) and added.startswith("\n[127.0.0.1]:")
                  and added.count("\n") == 2)
    if not after.startswith(mine):
        out.leftovers.append("the user's lines were rewritten")
    return out


# ---------------------------------------------------------------- rows: one device, several clients

def _bench_call(client: AgentClient, artifact: Path, sha: str, min_seconds: float) -> dict[str, Any]:
    return client.bench(artifact, sha, "onnxruntime", 1, 1, 20, min_seconds, 0.2, timeout=120.0)


def _p50(result: dict[str, Any]) -> float:
    times = sorted(result["times_s"])
    return times[len(times) // 2] * 1000.0


def concurrent_benches(target: Target, artifact: Path, min_seconds: float = 2.0) -> Outcome:
    """Two clients (as two hosts) bench on one device at once: the device lock serializes them."""
    out = Outcome("two concurrent benches on one device", ">= 1.6x one bench, no overlap, p50s near a lone one")
    sha = sha256_file(artifact)
    events: list[dict[str, Any]] = []
    clients = [ssh_client(target, on_event=lambda name, ev: events.append(ev)) for _ in range(2)]
    try:
        for c in clients:
            c.open()
            c.ensure_file(artifact, sha)
        _bench_call(clients[0], artifact, sha, min_seconds)  # warm the device
        t0 = time.monotonic()
        lone = _bench_call(clients[0], artifact, sha, min_seconds)
        lone_s = time.monotonic() - t0
        results: list[Any] = [None, None]
        barrier = threading.Barrier(2)

        def run(i: int) -> None:
            barrier.wait()
            try:
                results[i] = _bench_call(clients[i], artifact, sha, min_seconds)
            except Exception as exc:  # reported below
                results[i] = exc
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        t0 = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
        pair_s = time.monotonic() - t0
    finally:
        for c in clients:
            c.shutdown()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        out.error, out.observed = errors[0], describe(errors[0])
        return out
    overlap = _overlap([(r["started_at"], r["ended_at"]) for r in results])
    p50s = [_p50(r) for r in results]
    lone_p50 = _p50(lone)
    worst = max(abs(p - lone_p50) / lone_p50 for p in p50s)
    out.details = {"lone_s": lone_s, "pair_s": pair_s, "ratio": pair_s / lone_s, "overlap_s": overlap,
                   "lone_p50_ms": lone_p50, "pair_p50_ms": p50s, "worst_p50_dev": worst,
                   "waiting_events": [e.get("message") for e in events]}
    out.observed = (f"{pair_s / lone_s:.2f}x one bench, overlap {overlap:.2f} s, p50 {lone_p50:.2f} ms alone vs "
                    f"{' / '.join(f'{p:.2f}' for p in p50s)} ms (worst {worst * 100:.0f}%), "
                    f"{len(events)} waiting notice(s)")
    out.seconds = pair_s
    out.passed = overlap <= 0.0 and pair_s >= 1.6 * lone_s and worst <= 0.10 and len(events) == 1
    return out


def _profile_run(profile: Path, artifact: Path, home: Path, min_seconds: float) -> subprocess.Popen:
    """`edgeprune profile --json` with its own measurement cache and host-side locks (as a second
    host would have), so only the lock on the device can serialize it with another run."""
    env = {**os.environ, "EDGEPRUNE_CACHE_DIR": str(home)}
    return subprocess.Popen([str(EDGEPRUNE), "profile", str(artifact), "--profile", str(profile), "--json",
                             "--no-cache", "--min-seconds", str(min_seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=env)


def _finish(proc: subprocess.Popen) -> tuple[float, dict[str, Any], str]:
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"edgeprune profile exited {proc.returncode}: {err.strip().splitlines()[-1:]}")
    return time.monotonic(), json.loads(out), err


def _profile_round(profile: Path, artifact: Path, folder: Path, i: int, min_seconds: float) -> dict[str, Any]:
    """A lone `edgeprune profile` run, then two at once from two 'hosts'."""
    start = time.monotonic()
    end, lone, _ = _finish(_profile_run(profile, artifact, folder / f"lone{i}", min_seconds))
    lone_s = end - start
    start = time.monotonic()
    procs = [_profile_run(profile, artifact, folder / f"host{i}-{k}", min_seconds) for k in range(2)]
    done = [_finish(p) for p in procs]
    spans = [d[1]["device"]["bench_span"] for d in done]
    return {"lone_s": lone_s, "pair_s": max(d[0] for d in done) - start, "lone_p50_ms": lone["latency_ms"]["p50"],
            "pair_p50_ms": [d[1]["latency_ms"]["p50"] for d in done],
            "pair_overlap_s": _overlap(spans), "pair_bench_s": [end - begin for begin, end in spans],
            "waited": ["waiting for the device, held by" in d[2] for d in done]}


def concurrent_profiles(target: Target, artifact: Path, folder: Path, min_seconds: float = 3.0,
                        rounds: int = 1) -> Outcome:
    """Two `edgeprune profile` runs on one device from two 'hosts' (separate host state) at once:
    together >= 1.6x one run, each p50 within 10% of a lone run's. With several rounds (a lone
    run, then a pair, each time) the medians are compared too: on a loaded machine lone runs
    alone differ by more than 10% from one to the next."""
    out = Outcome("two concurrent `edgeprune profile` runs, two hosts", ">= 1.6x one run, p50s within 10% of a lone one")
    profile = profile_file(target, folder, runs=50, retries=0)
    try:
        _finish(_profile_run(profile, artifact, folder / "warm", min_seconds))
        done = [_profile_round(profile, artifact, folder, i, min_seconds) for i in range(rounds)]
    except Exception as exc:
        out.error, out.observed = exc, describe(exc)
        return out
    lone = [r["lone_p50_ms"] for r in done]
    pair = [p for r in done for p in r["pair_p50_ms"]]
    worst = max(abs(p - r["lone_p50_ms"]) / r["lone_p50_ms"] for r in done for p in r["pair_p50_ms"])
    median_dev = abs(_median(pair) - _median(lone)) / _median(lone)
    ratio = min(r["pair_s"] / r["lone_s"] for r in done)
    waited = min(sum(r["waited"]) for r in done)
    overlap = max(r["pair_overlap_s"] for r in done)
    out.details = {"rounds": done, "ratio": ratio, "overlap_s": overlap, "worst_p50_dev": worst,
                   "median_p50_dev": median_dev,
                   "lone_p50_spread": (max(lone) - min(lone)) / _median(lone), "runs_that_waited": waited}
    out.observed = (f"{ratio:.2f}x one run (lowest of {rounds}), p50 {_median(lone):.2f} ms alone vs "
                    f"{_median(pair):.2f} ms in pairs (medians, {median_dev * 100:.0f}% apart; worst single run "
                    f"{worst * 100:.0f}%), one run of each pair said whom it waited for: {waited == 1}")
    out.seconds = max(r["pair_s"] for r in done)
    out.passed = overlap <= 0.0 and ratio >= 1.6 and worst <= 0.10 and waited == 1
    return out


def _overlap(spans: list) -> float:
    """Seconds two (start, end) spans on the device's clock share; 0 when one ended before the other began."""
    (_, end0), (start1, _) = sorted(tuple(s) for s in spans)
    return max(0.0, end0 - start1)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def busy_device(target: Target, artifact: Path, lock_timeout: float = 1.0) -> Outcome:
    """A device held longer than the second client's lock timeout: TargetBusyError naming the holder."""
    out = Outcome("device held past the lock timeout", f"TargetBusyError after {lock_timeout:g} s naming the holder")
    sha = sha256_file(artifact)
    holder, waiter = ssh_client(target), ssh_client(target, lock_timeout=lock_timeout, on_event=lambda n, e: None)
    try:
        holder.open()
        waiter.open()
        waiter.ensure_file(artifact, sha)
        thread = threading.Thread(target=lambda: _bench_call(holder, artifact, sha, 6.0), daemon=True)
        thread.start()
        busy_bench(target.workdir, 60)
        start = time.monotonic()
        try:
            _bench_call(waiter, artifact, sha, 0.2)
            out.observed = "benched (no error)"
        except Exception as exc:
            out.error, out.observed = exc, describe(exc)
        out.seconds = time.monotonic() - start
        thread.join(60)
    finally:
        holder.shutdown()
        waiter.shutdown()
    text = str(out.error)
    out.passed = (type(out.error).__name__ == "TargetBusyError" and f"pid {os.getpid()}" in text
                  and socket.gethostname() in text and lock_timeout <= out.seconds <= lock_timeout + 3.0)
    return out


def hostile_requests(target: Target) -> Outcome:
    """Deep nesting, a huge line, garbage bytes: each answered with BadRequest, the agent lives on."""
    out = Outcome("hostile requests (deep nesting, 8 MB line, garbage)", "one BadRequest each, same agent answers")
    lines = {"nested arrays x100000": b"[" * 100000, "nested objects x50000": b'{"a":' * 50000,
             "8 MB without newline": b"x" * (8 << 20), "garbage bytes": bytes(range(256)).replace(b"\n", b""),
             "NaN id": b'{"id": NaN, "op": "hello"}', "op not a string": b'{"id": 1, "op": [1, 2]}'}
    client = ssh_client(target)
    replies, slowest = {}, 0.0
    try:
        pid = client.open()["pid"]
        for name, line in lines.items():
            start = time.monotonic()
            client.channel.send_line(line)
            reply = json.loads(client.channel.recv_line(30.0))
            slowest = max(slowest, time.monotonic() - start)
            replies[name] = (reply.get("error") or {}).get("type")
        same = client.call("hello")["pid"] == pid
    except Exception as exc:
        out.error, out.observed = exc, describe(exc)
        return out
    finally:
        client.shutdown()
    out.seconds = slowest
    out.details = {"replies": replies}
    out.observed = f"{sum(v == 'BadRequest' for v in replies.values())}/{len(replies)} BadRequest, " + \
        ("same agent still answers" if same else "the agent changed")
    out.passed = same and all(v == "BadRequest" for v in replies.values()) and slowest < 10.0
    return out


# ---------------------------------------------------------------- rows: the client goes away

CLIENT = r"""
import sys
from edgeprune.targets import load_target
load_target(sys.argv[1]).measure(sys.argv[2], use_cache=False)
"""


def client_gone(target: Target, artifact: Path, folder: Path, how: str) -> Outcome:
    """The client interrupted mid-bench (how: 'sigint' to the `edgeprune profile` CLI, as Ctrl-C
    does; 'sigkill' to a Python client: a lost connection): agent and bench process gone fast."""
    label = {"sigint": "Ctrl-C (SIGINT) to `edgeprune profile`", "sigkill": "client killed (SIGKILL)"}[how]
    out = Outcome(f"{label} mid-bench over {target.transport}", "agent and bench process gone within 5 s")
    profile = profile_file(target, folder, min_seconds=60.0, runs=10, retries=0)
    if how == "sigint":
        argv = [str(EDGEPRUNE), "profile", str(artifact), "--profile", str(profile), "--no-cache"]
    else:
        argv = [sys.executable, "-c", CLIENT, str(profile), str(artifact)]
    # SIGINT as a terminal's Ctrl-C finds it: a shell starts background jobs with SIGINT ignored,
    # and the CLI would inherit that from a bench or suite run in the background
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO), text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    mark = target.workdir
    try:
        if busy_bench(mark, 90) is None:
            out.observed = "no bench started"
            return out
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
        out.seconds, out.leftovers = gone_within(mark, 5.0)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out.details = {"client_exit": proc.returncode, "stderr": err.strip().splitlines()[-3:]}
    out.observed = f"client exit {proc.returncode}; agent and bench gone after {out.seconds:.1f} s"
    expected_exit = 130 if how == "sigint" else -signal.SIGKILL
    out.passed = not out.leftovers and out.seconds < 5.0 and proc.returncode == expected_exit
    return out


def local_target(folder: Path, **fields: Any) -> Target:
    """The agent as a local process, its workdir under `folder` (unique per run)."""
    base = {"name": f"t-faults-local-{os.getpid()}", "transport": "local",
            "workdir": str(folder / marker("local"))}
    base.update(fields)
    return testing.quick_target(**base)


def adb_target(tag: str = "adb") -> Target:
    return testing.quick_target(name=f"t-faults-{tag}-{os.getpid()}", transport="adb", python="python3",
                                workdir=marker(tag), emulation={"cpu_fraction": 1.0, "memory_mb": 1024, "threads": 1})


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgeprune-faults-"))
