"""Target: a device described by a hardware profile (YAML), and the one door to measure on it.

Policies and searches ask a Target for a Measurement; only the Target talks to a transport.
`with target:` (or `target.session()`) keeps one agent session open across several calls.
"""
from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import yaml

from edgeprune.errors import BadInputError, EdgePruneError

TRANSPORT_KINDS = ("local", "ssh", "adb")
RUNTIMES = ("onnxruntime", "tflite")
ARTIFACT_RUNTIME = {".onnx": "onnxruntime", ".tflite": "tflite"}
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "hardware_profiles"


def user_profiles_dir() -> Path:
    """$EDGEPRUNE_TARGETS_DIR, else ~/.config/edgeprune/targets."""
    env = os.environ.get("EDGEPRUNE_TARGETS_DIR")
    return Path(env) if env else Path.home() / ".config" / "edgeprune" / "targets"


@dataclass
class Emulation:
    """How an emulated target limits the host: CPU bandwidth (of one core) and memory."""

    cpu_fraction: float
    memory_mb: int
    threads: Optional[int] = None
    cfs_period_us: int = 4000  # short, so the quota acts like a slower CPU (DESIGN.md)

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
    source_file: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.emulation, dict):
            self.emulation = _build(Emulation, self.emulation, f"{self.name}.emulation")
        self._validate()
        self._session: Any = None

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
        for attr in ("threads", "runs", "port"):
            if int(getattr(self, attr)) < 1:
                raise BadInputError(f"{self.name}: {attr} must be at least 1")
        if int(self.warmup) < 1 or int(self.retries) < 0:
            raise BadInputError(f"{self.name}: warmup must be >= 1 and retries >= 0")

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

    # -------------------------------------------------------------- sessions

    @contextlib.contextmanager
    def session(self) -> Iterator["Target"]:
        """Keep one connection and agent open for the calls inside the block."""
        if self._session is not None:
            yield self
            return
        from edgeprune.targets._session import open_client
        self._session = open_client(self)
        try:
            yield self
        finally:
            client, self._session = self._session, None
            client.shutdown()

    def __enter__(self) -> "Target":
        self._cm = self.session()
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)

    def _client(self) -> Any:
        if self._session is None:
            raise EdgePruneError("internal: no session")
        return self._session

    # -------------------------------------------------------------- the API policies use

    def measure(self, artifact: str | os.PathLike, runs: Optional[int] = None, warmup: Optional[int] = None,
                threads: Optional[int] = None, *, min_seconds: Optional[float] = None,
                warmup_seconds: Optional[float] = None, use_cache: bool = True) -> "Measurement":
        """Profile an .onnx/.tflite artifact on this target, following the measurement protocol."""
        from edgeprune.targets._session import measure
        with self.session():
            return measure(self, self._client(), Path(artifact), runs=runs or self.runs,
                           warmup=warmup or self.warmup, threads=threads or self.default_threads(),
                           min_seconds=self.min_seconds if min_seconds is None else min_seconds,
                           warmup_seconds=self.warmup_seconds if warmup_seconds is None else warmup_seconds,
                           use_cache=use_cache)

    def compare(self, artifact_a: str | os.PathLike, artifact_b: str | os.PathLike, rounds: int = 5,
                **settings: Any) -> "Comparison":
        """Interleaved A/B comparison of two artifacts (see edgeprune.targets.compare)."""
        from edgeprune.targets.compare import compare
        return compare(self, artifact_a, artifact_b, rounds=rounds, **settings)

    def infer(self, artifact: str | os.PathLike, batch_nchw: np.ndarray) -> np.ndarray:
        """Run the artifact on the device on an NCHW batch; returns the first output."""
        from edgeprune.targets._session import infer
        with self.session():
            return infer(self, self._client(), Path(artifact), np.asarray(batch_nchw))

    def check(self) -> dict[str, Any]:
        """Reach the device, start the agent and report what it has; `ok` says if it can run our runtime."""
        from edgeprune.targets._session import check
        with self.session():
            return check(self, self._client())

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


from edgeprune.targets.compare import Comparison  # noqa: E402  (for the annotations above)
from edgeprune.targets.measurement import Measurement  # noqa: E402
