"""Emulated targets: a real sshd (or an adb stand-in) on 127.0.0.1 whose sessions run inside a
cgroup with the profile's CPU bandwidth and memory limit.

`up(target)` needs root (cgroups, sshd). Its state (port, keys, known_hosts, pids, cgroups)
lives in `state_dir(name)`; `client_settings` reads it so the emulated profile connects like
any other ssh/adb target, and `down` kills everything it started. Numbers measured this way
are labeled emulated and never stand for the board's.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from edgeprune._io import atomic_write_bytes
from edgeprune.errors import BadInputError, TargetUnreachableError
from edgeprune.targets import _cgroup

if TYPE_CHECKING:
    from edgeprune.targets.profile import Target

SSHD = "/usr/sbin/sshd"
SFTP_SERVER_CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server", "/usr/lib/ssh/sftp-server")


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


def status(name: str) -> dict[str, Any]:
    """Whether the emulator is up, with its endpoint and limits."""
    state = read_state(name)
    if state is None:
        return {"name": name, "running": False}
    return {**state, "running": _alive(state.get("pid"))}


def client_settings(target: "Target") -> dict[str, Any]:
    """Connection settings for the emulated target from its state directory."""
    state = status(target.name)
    if not state["running"]:
        raise TargetUnreachableError(f"emulated target {target.name} is not up: run `edgeprune emulate up "
                                     f"{target.name}` (as root)")
    keys = ("host", "port", "user", "key", "known_hosts", "serial", "adb_server", "python")
    return {k: state.get(k) for k in keys if state.get(k) is not None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
    raise TargetUnreachableError(f"{what} did not start on 127.0.0.1:{port}{': ' + tail[0] if tail else ''}")


def _require_root(name: str) -> None:
    if os.geteuid() != 0:
        raise TargetUnreachableError(f"emulate up {name} needs root (it creates cgroups and runs sshd); "
                                     f"run it as root")


def up(target: "Target") -> dict[str, Any]:
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
    dirs = _cgroup.create(target.name, emu.cpu_fraction, emu.memory_mb, emu.cfs_period_us)
    state = {"name": target.name, "host": "127.0.0.1", "python": sys.executable, "cgroups": dirs,
             "cgroup_version": _cgroup.version(), "cfs": list(_cgroup.cfs_settings(emu.cpu_fraction,
                                                                                     emu.cfs_period_us)),
             "memory_mb": emu.memory_mb, "transport": target.transport}
    _write_state(sdir, state)  # so `down` can clean up even if the start fails
    try:
        starter = _start_adb_standin if target.transport == "adb" else _start_sshd
        state.update(starter(target, sdir, dirs))
    except BaseException:
        down(target.name)
        raise
    _write_state(sdir, state)
    return {**state, "running": True}


def _write_state(sdir: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(sdir / "state.json", json.dumps(state, indent=2).encode())


def _session_script(sdir: Path, dirs: list[str]) -> Path:
    """The ForceCommand wrapper: join the cgroup, then run what the client asked for."""
    joins = "\n".join(f"echo $$ > '{f}' || exit 97" for f in _cgroup.procs_files(dirs))
    venv_bin = os.path.dirname(sys.executable)
    text = (f"#!/bin/sh\n# edgeprune emulated session: every command runs inside the target's cgroup\n{joins}\n"
            f"PATH='{venv_bin}':$PATH; export PATH\n"
            'if [ -z "$SSH_ORIGINAL_COMMAND" ]; then exec /bin/sh; fi\n'
            'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n')
    path = sdir / "session.sh"
    path.write_text(text)
    path.chmod(0o755)
    return path


def _keygen(path: Path) -> str:
    """Make an ed25519 key pair without passphrase; returns the public key line."""
    if shutil.which("ssh-keygen") is None:
        raise TargetUnreachableError("ssh-keygen not found: apt-get install openssh-client")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeprune-emulate", "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Path(f"{path}.pub").read_text().strip()


def _sshd_config(sdir: Path, port: int, script: Path) -> str:
    sftp = next((p for p in SFTP_SERVER_CANDIDATES if os.path.exists(p)), "internal-sftp")
    user = _user()
    return "\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f'HostKey "{sdir / "host_key"}"',
        f'PidFile "{sdir / "sshd.pid"}"', f'AuthorizedKeysFile "{sdir / "authorized_keys"}"',
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no", f"AllowUsers {user}",
        f'ForceCommand "{script}"', f"Subsystem sftp {sftp}", "ClientAliveInterval 5",
        "ClientAliveCountMax 3", "MaxStartups 50", "MaxSessions 50", "LogLevel ERROR",
        # bash sources the host user's ~/.bashrc for ssh commands at SHLVL 1 (0.3 s per command
        # with pyenv there); an emulated board should not pay for this host's start-up files
        "SetEnv SHLVL=1", ""])


def _user() -> str:
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def _start_sshd(target: "Target", sdir: Path, dirs: list[str]) -> dict[str, Any]:
    """A private sshd on 127.0.0.1 with its own host key, client key and config."""
    if not os.path.exists(SSHD):
        raise TargetUnreachableError(f"{SSHD} not found: apt-get install openssh-server (see .ci/system-deps.sh)")
    host_pub = _keygen(sdir / "host_key")
    (sdir / "authorized_keys").write_text(_keygen(sdir / "client_key") + "\n")
    port = _free_port()
    (sdir / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n")
    (sdir / "sshd_config").write_text(_sshd_config(sdir, port, _session_script(sdir, dirs)))
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    log = sdir / "sshd.log"
    out = subprocess.run([SSHD, "-f", str(sdir / "sshd_config"), "-E", str(log)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise TargetUnreachableError(f"sshd failed to start: {(out.stderr or log.read_text()).strip()[:300]}")
    _wait_port(port, 10.0, "sshd", log)
    return {"port": port, "user": _user(), "key": str(sdir / "client_key"),
            "known_hosts": str(sdir / "known_hosts"), "pid": _read_pid(sdir / "sshd.pid")}


def _read_pid(path: Path, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise TargetUnreachableError(f"no pid file at {path}")


def _start_adb_standin(target: "Target", sdir: Path, dirs: list[str]) -> dict[str, Any]:
    """The adb stand-in (device_agents/adb_standin.py) on a free 127.0.0.1 port."""
    port = _free_port()
    serial = f"emulator-{target.name}"
    root = sdir / "device"
    root.mkdir(exist_ok=True)
    log = sdir / "standin.log"
    argv = [sys.executable, "-m", "device_agents.adb_standin", "--port", str(port), "--serial", serial,
            "--root", str(root)] + [a for f in _cgroup.procs_files(dirs) for a in ("--cgroup-procs", f)]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True,
                                cwd=str(Path(__file__).resolve().parents[2]))
    _wait_port(port, 10.0, "adb stand-in", log)
    return {"port": port, "pid": proc.pid, "serial": serial, "adb_server": f"tcp:127.0.0.1:{port}"}


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


def down(name: str) -> dict[str, Any]:
    """Stop the emulator and everything it started; remove its cgroups and state."""
    state = read_state(name)
    if state is None:
        return {"name": name, "running": False, "stopped": False}
    _kill_tree(state.get("pid"))
    if state.get("cgroups"):
        _cgroup.destroy(state["cgroups"])
    shutil.rmtree(state_dir(name), ignore_errors=True)
    return {"name": name, "running": False, "stopped": True}
