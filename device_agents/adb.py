"""ADBTransport: an Android device through the `adb` command line client (push, shell).

Where the device has Python (and a runtime) the usual agent runs over `adb shell`. Otherwise
the profile names TFLite's `benchmark_model` binary on the device and BenchmarkModelClient
runs it and parses its summary (it reports avg/std/min/max, not per-run times).
"""
from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from device_agents.client import AgentClient, AgentOptions, BenchCrashedError
from device_agents.local import _ProcessChannel
from device_agents.transport import AgentChannel, ConnectionLost, Transport, quote_command, sha256_file, with_retries
from edgeprune.errors import BadInputError, DoesNotFitError, TargetUnreachableError

T = TypeVar("T")
RC_MARK = "__edgeprune_rc="


class ADBTransport(Transport):
    """Runs commands on a device with `adb -s SERIAL shell`; files go by `adb push`."""

    kind = "adb"

    def __init__(self, name: str, serial: Optional[str] = None, adb: str = "adb", adb_server: Optional[str] = None,
                 workdir: Optional[str] = None, python: Optional[str] = "python3",
                 benchmark_model: Optional[str] = None, **kw: float) -> None:
        super().__init__(name, **kw)
        self.serial, self.adb, self.adb_server = serial, adb, adb_server
        self.python, self.benchmark_model = python, benchmark_model
        self._workdir = workdir or "/data/local/tmp/edgeprune"

    def _argv(self, *args: str) -> list[str]:
        return [self.adb] + (["-s", self.serial] if self.serial else []) + list(args)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.adb_server:
            env["ADB_SERVER_SOCKET"] = self.adb_server
        return env

    def _adb(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self._argv(*args), capture_output=True, timeout=timeout, env=self._env(), check=False)
        except FileNotFoundError:
            raise TargetUnreachableError(f"{self.name}: adb not found ({self.adb}); apt-get install adb") from None
        except subprocess.TimeoutExpired:
            raise ConnectionLost(f"{self.name}: adb {args[0]} timed out after {timeout:.0f} s") from None

    def connect(self) -> None:
        out = self._adb(["get-state"], self.connect_timeout)
        state = out.stdout.decode(errors="replace").strip()
        if out.returncode != 0 or state != "device":
            reason = (out.stderr.decode(errors="replace").strip() or state or "no answer").splitlines()[-1]
            raise ConnectionLost(f"{self.name}: adb device {self.serial or '(default)'} not available: {reason}")

    def close(self) -> None:
        pass

    def workdir(self) -> str:
        return self._workdir

    def run(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        # shell v1 does not carry exit codes: print it after the command and read it back
        out = self._adb(["shell", f"{quote_command(argv)}; echo {RC_MARK}$?"], timeout)
        text = out.stdout.decode(errors="replace")
        match = re.search(re.escape(RC_MARK) + r"(\d+)", text)
        if match is None:
            raise ConnectionLost(f"{self.name}: adb shell failed: {out.stderr.decode(errors='replace').strip()[:200]}")
        return int(match.group(1)), text[:match.start()], out.stderr.decode(errors="replace")

    def exists(self, remote: str) -> bool:
        return self.run(["test", "-e", remote], self.op_timeout)[0] == 0

    def upload(self, local: Path, remote: str) -> None:
        parent = remote.rsplit("/", 1)[0] if "/" in remote else "."
        self.run(["mkdir", "-p", parent], self.op_timeout)
        tmp = f"{remote}.{uuid.uuid4().hex[:8]}.part"
        out = self._adb(["push", str(local), tmp], max(self.op_timeout, 120.0))
        if out.returncode != 0:
            raise ConnectionLost(f"{self.name}: adb push failed: {out.stderr.decode(errors='replace').strip()[:200]}")
        rc, _, err = self.run(["mv", "-f", tmp, remote], self.op_timeout)
        if rc != 0:
            raise TargetUnreachableError(f"{self.name}: cannot move the upload into place: {err.strip()[:200]}")

    def start(self, argv: Sequence[str]) -> AgentChannel:
        try:
            proc = subprocess.Popen(self._argv("shell", quote_command(argv)), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._env(),
                                    start_new_session=True)
        except FileNotFoundError:
            raise TargetUnreachableError(f"{self.name}: adb not found ({self.adb}); apt-get install adb") from None
        return _ProcessChannel(proc, f"target {self.name} (adb {self.serial or 'default'})")

    def client_factory(self, options: AgentOptions) -> Any:
        """The agent where the device has Python, else the benchmark_model runner."""
        if options.python:
            return AgentClient(self, options)
        if not self.benchmark_model:
            raise BadInputError(f"{self.name}: the profile names neither python nor benchmark_model")
        return BenchmarkModelClient(self, options)


_TIMINGS = re.compile(r"count=(\d+)(?: first=(\d+))? curr=(\d+) min=(\d+) max=(\d+) avg=([\d.e+]+) std=(\d+)")
_MEMORY = re.compile(r"(?:Peak memory footprint|Memory footprint delta)[^:]*:\s*init=([\d.]+)\s+overall=([\d.]+)")
_INIT = re.compile(r"Init:\s*([\d.]+)")


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Timings (the counted runs: the last `count=` line) and memory from benchmark_model output."""
    timings = _TIMINGS.findall(text)
    if not timings:
        raise TargetUnreachableError(f"benchmark_model printed no timings: {text.strip()[-300:]}")
    count, _, _, tmin, tmax, avg, std = timings[-1]
    avg_ms, std_ms = float(avg) / 1000.0, float(std) / 1000.0
    mem = _MEMORY.findall(text)
    init = _INIT.search(text)
    return {"runs": int(count), "latency_ms": {"p50": avg_ms, "p90": avg_ms, "p99": float(tmax) / 1000.0,
                                               "mean": avg_ms, "std": std_ms, "cv": std_ms / avg_ms if avg_ms else 0.0},
            "min_ms": float(tmin) / 1000.0, "peak_memory_mb": float(mem[-1][1]) if mem else None,
            "memory_method": "benchmark_model" if mem else None,
            "load_ms": float(init.group(1)) / 1000.0 if init else None}


class BenchmarkModelClient:
    """The AgentClient surface over TFLite's benchmark_model, for devices without Python."""

    def __init__(self, transport: ADBTransport, options: AgentOptions) -> None:
        self.transport, self.options = transport, options
        self.hello: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.transport.name

    def open(self) -> dict[str, Any]:
        if not self.hello:
            self.transport.connect()
            rc, model, _ = self.transport.run(["getprop", "ro.product.model"], self.options.op_timeout)
            _, cores, _ = self.transport.run(["nproc"], self.options.op_timeout)
            self.hello = {"protocol": self.options.protocol, "runtimes": {"tflite": "benchmark_model"},
                          "cpu": model.strip() if rc == 0 else None, "hostname": self.transport.serial,
                          "cores": int(cores.strip() or 0) or None}
        return self.hello

    def retrying(self, fn: Callable[["BenchmarkModelClient"], T]) -> T:
        def attempt() -> T:
            self.open()
            return fn(self)

        def on_lost() -> None:
            self.hello = {}

        return with_retries(self.name, attempt, on_lost, self.options.retries, self.options.backoff)

    def bench(self, local: Path, sha: str, runtime: str, threads: int, warmup: int, runs: int,
              min_seconds: float, warmup_seconds: float, timeout: float) -> dict[str, Any]:
        """Push the model (if missing) and run benchmark_model on it."""
        if runtime != "tflite":
            raise TargetUnreachableError(f"{self.name}: benchmark_model runs .tflite models only")
        remote = f"{self.transport.workdir()}/cache/{sha}.tflite"
        if not self.transport.exists(remote):
            self.transport.upload(local, remote)
        argv = [self.transport.benchmark_model, f"--graph={remote}", f"--num_threads={threads}",
                f"--warmup_runs={warmup}", f"--warmup_min_secs={warmup_seconds}", f"--num_runs={runs}",
                f"--min_secs={min_seconds}"]
        kills = self._oom_kills()
        rc, out, err = self.transport.run(argv, timeout)
        if rc != 0:
            _raise_benchmark_failure(self.name, rc, out + err, kills, self._oom_kills())
        parsed = parse_benchmark_model(out + err)
        return {**parsed, "runtime": "tflite", "runtime_version": "benchmark_model", "times_s": [],
                "warmup_runs": warmup,
                "notes": ["benchmark_model reports avg/std/min/max only: p50 and p90 are its average"]}

    def _oom_kills(self) -> Optional[int]:
        """The kernel's OOM-kill count (/proc/vmstat), None where it is not readable."""
        rc, text, _ = self.transport.run(["cat", "/proc/vmstat"], self.options.op_timeout)
        match = re.search(r"^oom_kill (\d+)$", text, re.M) if rc == 0 else None
        return int(match.group(1)) if match else None

    def infer(self, *args: Any) -> Any:
        raise TargetUnreachableError(f"{self.name}: infer needs python and a TFLite runtime on the device")

    def close(self) -> None:
        self.hello = {}

    def shutdown(self) -> None:
        self.close()


def _raise_benchmark_failure(name: str, rc: int, text: str, kills_before: Optional[int] = None,
                             kills_after: Optional[int] = None) -> None:
    """Out of memory only when the kernel counted an OOM kill (or the tool says so); any other
    signal death is a target failure worth a retry; any other exit, a model the tool refused."""
    tail = text.strip().splitlines()[-1:] or [f"exit {rc}"]
    oom_killed = kills_before is not None and kills_after is not None and kills_after > kills_before
    if oom_killed or "out of memory" in text.lower():
        raise DoesNotFitError(f"{name}: does not fit (out of memory): {tail[0][:200]}")
    if rc > 128:
        raise BenchCrashedError(f"{name}: benchmark_model was killed by signal {rc - 128}: {tail[0][:200]}")
    raise BadInputError(f"{name}: benchmark_model failed (exit {rc}): {tail[0][:200]}")


__all__ = ["ADBTransport", "BenchmarkModelClient", "parse_benchmark_model", "sha256_file"]
