"""Target: a device described by a hardware profile (YAML), validated on creation.

A Target is data: where the device is (local, ssh or adb), how to measure on it (runs,
warm-up, timeouts, lock timeout) and, when emulated, the limits of the emulation. Its
measure, compare, infer and check are the one door policies use to the device; each
delegates to a session opened by `open_session()`. The session code
(edgeprune.targets.session, DeviceSession) imports this module and registers its class here
with `register_session`, so imports run one way: from the session down to the data.
`with target:` (or `target.session()`) keeps one session, one agent, open across calls.
"""
from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np
import yaml

from edgeprune._resources import builtin_profiles_dir
from edgeprune.errors import BadInputError, EdgePruneError
from edgeprune.targets.measurement import Comparison, Measurement

TRANSPORT_KINDS = ("local", "ssh", "adb")
RUNTIMES = ("onnxruntime", "tflite")
BUILTIN_DIR = builtin_profiles_dir()


def user_profiles_dir() -> Path:
    """$EDGEPRUNE_TARGETS_DIR, else ~/.config/edgeprune/targets."""
    env = os.environ.get("EDGEPRUNE_TARGETS_DIR")
    return Path(env) if env else Path.home() / ".config" / "edgeprune" / "targets"


class Session(Protocol):
    """What a session on a target offers (DeviceSession in edgeprune.targets.session); settings
    left None take the profile's protocol."""

    def measure(self, artifact: str | os.PathLike, runs: Optional[int] = None, warmup: Optional[int] = None,
                threads: Optional[int] = None, *, min_seconds: Optional[float] = None,
                warmup_seconds: Optional[float] = None, use_cache: bool = True) -> Measurement: ...

    def compare(self, artifact_a: str | os.PathLike, artifact_b: str | os.PathLike, rounds: int = 5,
                **settings: Any) -> Comparison: ...

    def infer(self, artifact: str | os.PathLike, batch_nchw: np.ndarray) -> np.ndarray: ...

    def check(self) -> dict[str, Any]: ...

    def clean(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


SessionFactory = Callable[["Target"], Session]
_SESSION_FACTORIES: list[SessionFactory] = []  # filled by edgeprune.targets.session; the last one is used


def register_session(factory: SessionFactory) -> SessionFactory:
    """Make `factory(target)` open the sessions of every Target (a class decorator for DeviceSession)."""
    _SESSION_FACTORIES.append(factory)
    return factory


@dataclass
class Emulation:
    """How an emulated target limits the host: CPU bandwidth (of one core) and memory."""

    cpu_fraction: float
    memory_mb: int
    threads: Optional[int] = None
    # 20 ms: under the quota runs are timed by their share of CPU time (the agent's cpu-share timing); MobileNetV2-224
    # ran 2.11x slower at half a core with it, 2.35x at 4 ms (each stall costs the next burst)
    cfs_period_us: int = 20000

    def __post_init__(self) -> None:
        if not 0.01 <= float(self.cpu_fraction) <= 64:
            raise BadInputError(f"emulation.cpu_fraction must be in [0.01, 64], got {self.cpu_fraction}")
        if int(self.memory_mb) < 16:
            raise BadInputError(f"emulation.memory_mb must be at least 16, got {self.memory_mb}")
        if not 1000 <= int(self.cfs_period_us) <= 1_000_000:
            raise BadInputError(f"emulation.cfs_period_us must be in [1000, 1000000], got {self.cfs_period_us}")


@dataclass
class Target:
    """A device from a hardware profile; validated on creation."""

    name: str
    description: str = ""
    transport: str = "local"
    host: Optional[str] = None
    port: int = 22
    user: Optional[str] = None
    key: Optional[str] = None
    known_hosts: Optional[str] = None
    trust_on_first_use: bool = False
    serial: Optional[str] = None
    adb: str = "adb"
    adb_server: Optional[str] = None
    python: Optional[str] = "python3"
    benchmark_model: Optional[str] = None
    runtime: str = "onnxruntime"
    threads: int = 1
    memory_mb: Optional[int] = None
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    channel_multiple: int = 1  # channel counts the runtime's kernels run fastest at (latency tables' grid)
    emulation: Optional[Emulation] = None
    workdir: Optional[str] = None
    env: dict[str, str] = field(default_factory=dict)
    runs: int = 50
    warmup: int = 1
    min_seconds: float = 1.0
    warmup_seconds: float = 0.5
    connect_timeout: float = 10.0
    op_timeout: float = 60.0
    bench_timeout: float = 300.0
    retries: int = 2
    backoff: float = 0.5
    lock_timeout: float = 600.0  # seconds to wait while another process measures here ($EDGEPRUNE_LOCK_TIMEOUT)
    source_file: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.emulation, dict):
            self.emulation = _build(Emulation, self.emulation, f"{self.name}.emulation")
        self._validate()
        self._open: Optional[Session] = None  # the session of the current `with target.session()` block
        self._entered: list[Any] = []  # the blocks opened by `with target:`

    def _validate(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise BadInputError("a profile needs a name")
        if self.transport not in TRANSPORT_KINDS:
            raise BadInputError(f"{self.name}: transport must be one of {TRANSPORT_KINDS}, got {self.transport!r}")
        if self.runtime not in RUNTIMES:
            raise BadInputError(f"{self.name}: runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.transport == "ssh" and not self.host and not self.emulated:
            raise BadInputError(f"{self.name}: an ssh target needs host")
        if self.transport == "adb" and not self.python and not self.benchmark_model:
            raise BadInputError(f"{self.name}: an adb target needs python or benchmark_model")
        for attr in ("threads", "runs", "port", "channel_multiple"):
            if int(getattr(self, attr)) < 1:
                raise BadInputError(f"{self.name}: {attr} must be at least 1")
        if int(self.warmup) < 1 or int(self.retries) < 0:
            raise BadInputError(f"{self.name}: warmup must be >= 1 and retries >= 0")
        if not float(self.lock_timeout) >= 0:
            raise BadInputError(f"{self.name}: lock_timeout must be >= 0 seconds")

    @property
    def emulated(self) -> bool:
        return self.emulation is not None

    @property
    def source(self) -> str:
        return "emulated" if self.emulated else "device"

    def to_dict(self) -> dict[str, Any]:
        """The profile as a plain dict (for `targets show --json`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["emulation"] = vars(self.emulation) if self.emulation else None
        return out

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the profile only: an open session stays with the process that opened it."""
        return {**self.__dict__, "_open": None, "_entered": []}

    # -------------------------------------------------------------- sessions

    def open_session(self) -> Session:
        """A new session on this target (it connects on first use); the caller closes it."""
        if not _SESSION_FACTORIES:
            raise EdgePruneError("internal: no session class registered (import edgeprune.targets)")
        return _SESSION_FACTORIES[-1](self)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One connection and agent for the calls inside the block; nested blocks share it."""
        if self._open is not None:
            yield self._open
            return
        self._open = self.open_session()
        try:
            yield self._open
        finally:
            opened, self._open = self._open, None
            opened.close()

    def __enter__(self) -> "Target":
        block = self.session()
        block.__enter__()
        self._entered.append(block)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._entered.pop().__exit__(*exc)

    # -------------------------------------------------------------- the API policies use

    def measure(self, artifact: str | os.PathLike, runs: Optional[int] = None, warmup: Optional[int] = None,
                threads: Optional[int] = None, *, min_seconds: Optional[float] = None,
                warmup_seconds: Optional[float] = None, use_cache: bool = True) -> Measurement:
        """Profile an .onnx/.tflite artifact on this target, following the measurement protocol."""
        with self.session() as s:
            return s.measure(artifact, runs, warmup, threads, min_seconds=min_seconds,
                             warmup_seconds=warmup_seconds, use_cache=use_cache)

    def compare(self, artifact_a: str | os.PathLike, artifact_b: str | os.PathLike, rounds: int = 5,
                **settings: Any) -> Comparison:
        """Interleaved A/B comparison of two artifacts (settings: runs, min_seconds, warmup_seconds, threads)."""
        with self.session() as s:
            return s.compare(artifact_a, artifact_b, rounds, **settings)

    def infer(self, artifact: str | os.PathLike, batch_nchw: np.ndarray) -> np.ndarray:
        """Run the artifact on the device on an NCHW batch; returns the first output."""
        with self.session() as s:
            return s.infer(artifact, batch_nchw)

    def check(self) -> dict[str, Any]:
        """Reach the device, start the agent and report what it has; `ok` says if it can run our runtime."""
        with self.session() as s:
            return s.check()

    def clean(self) -> dict[str, Any]:
        """Empty the model cache on the device: {"removed": files, "freed_bytes": bytes}."""
        with self.session() as s:
            return s.clean()

    def default_threads(self) -> int:
        """Threads for a measurement: the emulation's when emulated, else the profile's."""
        if self.emulation is not None and self.emulation.threads:
            return int(self.emulation.threads)
        return int(self.threads)

    def python_argv(self) -> list[str]:
        """The profile's python command as argv."""
        return shlex.split(self.python or "python3")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate a dataclass from a dict, rejecting unknown keys with a readable error."""
    if not isinstance(data, dict):
        raise BadInputError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInputError(f"{where}: unknown key(s) {', '.join(unknown)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{where}: {exc}") from None


def target_from_file(path: str | os.PathLike) -> Target:
    """A Target from one YAML file."""
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BadInputError(f"cannot read profile {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise BadInputError(f"profile {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BadInputError(f"profile {path} must be a YAML mapping")
    data.setdefault("name", path.stem)
    data["source_file"] = str(path)
    return _build(Target, data, f"profile {path}")


def _profile_dirs() -> list[Path]:
    """Where profiles are looked up by name, first match wins: the user's, then the shipped ones."""
    return [user_profiles_dir(), BUILTIN_DIR]


def load_target(name_or_path: str | os.PathLike) -> Target:
    """A Target by name (user profiles first, then hardware_profiles/) or from a YAML path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return target_from_file(text)
    for folder in _profile_dirs():
        for ext in (".yaml", ".yml"):
            if (folder / f"{text}{ext}").is_file():
                return target_from_file(folder / f"{text}{ext}")
    raise BadInputError(f"unknown target {text!r}; known: {', '.join(list_targets()) or 'none'}")


def list_targets() -> list[str]:
    """Names of all targets (user profiles and the shipped hardware_profiles/)."""
    names = set()
    for folder in _profile_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.y*ml"))
    return sorted(names)

