"""The endpoint an emulated target is reached through, started by `emulate.up`: a private
sshd on 127.0.0.1 (ssh targets) or the adb stand-in (adb targets), each with its sessions
joining the target's cgroup."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import device_agents
from edgeprune.errors import TargetUnreachableError
from edgeprune.targets.emulate.cgroup import procs_files

SSHD = "/usr/sbin/sshd"
SFTP_SERVER_CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server", "/usr/lib/ssh/sftp-server")
REPO_ROOT = Path(device_agents.__file__).resolve().parents[1]  # where `-m device_agents.adb_standin` runs


def start_sshd(sdir: Path, dirs: list[str]) -> dict[str, Any]:
    """A private sshd on 127.0.0.1 with its own host key, client key and config; returns its state."""
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


def start_adb_standin(name: str, sdir: Path, dirs: list[str]) -> dict[str, Any]:
    """The adb stand-in (device_agents/adb_standin.py) on a free 127.0.0.1 port; returns its state."""
    port = _free_port()
    serial = f"emulator-{name}"
    root = sdir / "device"
    root.mkdir(exist_ok=True)
    log = sdir / "standin.log"
    argv = [sys.executable, "-m", "device_agents.adb_standin", "--port", str(port), "--serial", serial,
            "--root", str(root)] + [a for f in procs_files(dirs) for a in ("--cgroup-procs", f)]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True,
                                cwd=str(REPO_ROOT))
    _wait_port(port, 10.0, "adb stand-in", log)
    return {"port": port, "pid": proc.pid, "serial": serial, "adb_server": f"tcp:127.0.0.1:{port}"}


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


def _session_script(sdir: Path, dirs: list[str]) -> Path:
    """The ForceCommand wrapper: join the cgroup, then run what the client asked for."""
    joins = "\n".join(f"echo $$ > '{f}' || exit 97" for f in procs_files(dirs))
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
    return pwd.getpwuid(os.getuid()).pw_name


def _read_pid(path: Path, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise TargetUnreachableError(f"no pid file at {path}")
