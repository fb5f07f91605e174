"""SSHTransport: a board reached over SSH with paramiko (key auth, checked host keys, SFTP uploads).

Connecting works as OpenSSH does it: one connect timeout covers TCP, the server's banner and
the handshake together (a port that accepts but never speaks SSH fails once, after that
timeout, and is not retried); host keys are checked against known_hosts, whose lines paramiko
cannot parse are skipped with a one-line warning naming the file and line (@revoked keys are
refused); an unknown key is refused with a message saying how to add it, unless the profile
opts into trust-on-first-use, which APPENDS the new key's line and never rewrites the file.
Every paramiko failure is turned into one readable TargetUnreachableError (ConnectionLost when
a retry may help); paramiko's own log records do not propagate (attach a handler to the
"paramiko" logger to see them), so no library traceback reaches stderr.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from device_agents.transport import AgentChannel, ConnectionLost, Transport, quote_command
from edgeprune.errors import BadInputError, MissingDependencyError, TargetUnreachableError

log = logging.getLogger(__name__)


def import_paramiko() -> Any:
    """paramiko, or an error naming the pip extra that installs it."""
    try:
        import paramiko
    except ImportError as exc:
        raise MissingDependencyError(f"paramiko is not installed: pip install 'edgeprune[ssh]' ({exc})") from None
    return paramiko


def quiet_paramiko() -> None:
    """Keep paramiko's log records (its transport thread logs tracebacks) off the root logger."""
    logger = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


def load_known_hosts(paramiko: Any, path: Path, host_keys: Any, warn: Callable[[int, str], None]) -> list[Any]:
    """Add the entries of a known_hosts file to `host_keys`, skipping (with `warn(line, why)`) the
    lines paramiko cannot parse. Returns the keys marked @revoked."""
    revoked = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            warn(lineno, "not UTF-8 text")
            continue
        if not line or line.startswith("#"):
            continue
        marker = None
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
            if marker not in ("@revoked", "@cert-authority"):
                warn(lineno, f"unknown marker {marker}")
                continue
        if len(re.split(" |\t", line)) < 3:
            warn(lineno, "fewer than three fields (host, key type, key)")
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
        except Exception as exc:  # InvalidHostKey (bad base64), or key data paramiko cannot read
            warn(lineno, f"cannot read the key ({type(exc).__name__})")
            continue
        if entry is None:  # a key type paramiko does not know: OpenSSH skips those silently too
            log.debug("%s line %d: key type not supported by paramiko", path, lineno)
        elif marker == "@revoked":
            revoked.append(entry.key)
        elif marker == "@cert-authority":
            warn(lineno, "@cert-authority lines are not supported by paramiko")
        else:
            for name in entry.hostnames:
                host_keys.add(name, entry.key.get_name(), entry.key)
    return revoked


def append_known_host(path: Path, hostname: str, key: Any) -> None:
    """Append one known_hosts line for a key first seen now; the file is never rewritten."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as fh:
        size = os.fstat(fd).st_size
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                line = "\n" + line  # the user's last line had no newline: keep it whole
        fh.write(line.encode())
        fh.flush()
        os.fsync(fd)


class _Deadline:
    """One connect timeout for TCP, banner and handshake: closes the socket when it passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.fired = False
        self._timer: Optional[threading.Timer] = None

    def left(self) -> float:
        return max(0.05, self.end - time.monotonic())

    def guard(self, sock: socket.socket) -> None:
        def fire() -> None:
            self.fired = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._timer = threading.Timer(self.left(), fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _SSHChannel(AgentChannel):
    """An AgentChannel over one paramiko session channel."""

    def __init__(self, chan: Any, describe: str) -> None:
        self.chan = chan
        super().__init__(chan.recv, chan.sendall, chan.recv_stderr, describe)

    def close(self) -> None:
        super().close()
        try:
            self.chan.shutdown_write()
            self.chan.close()
        except Exception:
            pass


def _remember_policy(paramiko: Any) -> Any:
    """Trust-on-first-use: accept an unknown host key and remember it for appending."""
    class RememberNewKey(paramiko.MissingHostKeyPolicy):
        seen: Optional[tuple[str, Any]] = None

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            self.seen = (hostname, key)

    return RememberNewKey()


class SSHTransport(Transport):
    """Runs the agent on a host reachable by SSH; files go by SFTP."""

    kind = "ssh"

    def __init__(self, name: str, host: str, port: int = 22, user: Optional[str] = None,
                 key: Optional[str] = None, known_hosts: Optional[str] = None,
                 trust_on_first_use: bool = False, workdir: Optional[str] = None, **kw: float) -> None:
        super().__init__(name, **kw)
        self.host, self.port, self.user = host, int(port), user or os.environ.get("USER", "root")
        self.key = str(Path(key).expanduser()) if key else None
        self.known_hosts = Path(known_hosts or "~/.ssh/known_hosts").expanduser()
        self.trust_on_first_use = trust_on_first_use
        self._workdir_setting = workdir or ".cache/edgeprune-agent"
        self._client: Any = None
        self._sftp: Any = None
        self._warned: set[int] = set()

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def connect(self) -> None:
        if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
            return
        self.close()
        if self.key and not os.path.isfile(self.key):
            raise BadInputError(f"{self.name}: ssh key file not found: {self.key}")
        paramiko = import_paramiko()
        quiet_paramiko()
        client = paramiko.SSHClient()
        revoked = []
        if self.known_hosts.is_file():
            try:
                revoked = load_known_hosts(paramiko, self.known_hosts, client.get_host_keys(), self._warn_line)
            except OSError as exc:
                raise BadInputError(f"{self.name}: cannot read {self.known_hosts}: {exc.strerror}") from None
        policy = _remember_policy(paramiko) if self.trust_on_first_use else paramiko.RejectPolicy()
        client.set_missing_host_key_policy(policy)
        self._connect(paramiko, client)
        self._refuse_revoked(client, revoked)
        if self.trust_on_first_use and policy.seen is not None:
            append_known_host(self.known_hosts, *policy.seen)
        client.get_transport().set_keepalive(5)
        self._client = client

    def _warn_line(self, lineno: int, why: str) -> None:
        """One warning per known_hosts line per transport (connect may run again on a retry)."""
        if lineno not in self._warned:
            self._warned.add(lineno)
            log.warning("%s line %d: %s; line skipped", self.known_hosts, lineno, why)

    def _refuse_revoked(self, client: Any, revoked: list[Any]) -> None:
        key = client.get_transport().get_remote_server_key()
        if any(key == r for r in revoked):
            client.close()
            raise TargetUnreachableError(f"{self.name}: the host key of {self.host}:{self.port} is marked "
                                         f"@revoked in {self.known_hosts}")

    def _open_socket(self, deadline: _Deadline) -> socket.socket:
        try:
            return socket.create_connection((self.host, self.port), timeout=deadline.left())
        except OSError as exc:
            reason = "timed out" if isinstance(exc, socket.timeout) else (getattr(exc, "strerror", None) or str(exc))
            raise ConnectionLost(f"{self.name}: cannot reach {self.host}:{self.port} ({reason})") from None

    def _connect(self, paramiko: Any, client: Any) -> None:
        """client.connect within one connect timeout; paramiko's exceptions become one-line errors."""
        deadline = _Deadline(self.connect_timeout)
        sock = self._open_socket(deadline)
        deadline.guard(sock)
        t = deadline.left()
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=self.key, timeout=t,
                           banner_timeout=t, auth_timeout=t, channel_timeout=self.connect_timeout, sock=sock,
                           allow_agent=False, look_for_keys=self.key is None)
        except Exception as exc:
            transport = client.get_transport()
            banner = bool(transport is not None and transport.remote_version)
            client.close()
            raise self._connect_error(paramiko, exc, deadline, banner) from None
        finally:
            deadline.cancel()

    def _connect_error(self, paramiko: Any, exc: Exception, deadline: _Deadline, banner: bool) -> Exception:
        """The one-line error for a failed connect; ConnectionLost only where a retry may help."""
        if isinstance(exc, paramiko.BadHostKeyException):
            return TargetUnreachableError(
                f"{self.name}: the host key of {self.host}:{self.port} does not match {self.known_hosts} "
                f"(possible man-in-the-middle); if the device was reinstalled remove the old key with "
                f"ssh-keygen -R '[{self.host}]:{self.port}' -f {self.known_hosts}")
        if isinstance(exc, paramiko.AuthenticationException):
            return TargetUnreachableError(f"{self.name}: {self.where} refused the key {self.key or '(default keys)'}")
        if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
            return TargetUnreachableError(
                f"{self.name}: the host key of {self.host}:{self.port} is not in {self.known_hosts}; check it "
                f"and add it (ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}) or set "
                f"trust_on_first_use: true in the profile")
        if deadline.fired or time.monotonic() >= deadline.end:
            what = "the SSH handshake did not finish" if banner else "sent no SSH banner (is it an SSH server?)"
            return TargetUnreachableError(f"{self.name}: {self.host}:{self.port} accepted the connection but "
                                          f"{what} within the connect timeout of {self.connect_timeout:g} s")
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ConnectionLost(f"{self.name}: ssh to {self.where} failed: {reason}")

    def close(self) -> None:
        for obj in (self._sftp, self._client):
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        self._sftp = self._client = None

    def _sftp_client(self) -> Any:
        self.connect()
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
                self._sftp.get_channel().settimeout(self.op_timeout)
            except Exception as exc:
                raise ConnectionLost(f"{self.name}: cannot open SFTP on {self.where}: {exc}") from None
        return self._sftp

    def workdir(self) -> str:
        """The work directory; a relative one is relative to the login directory for both the
        commands and SFTP, so naming it needs no round trip (and no SFTP session)."""
        return self._workdir_setting.rstrip("/") or "/"

    def _guard(self, fn: Any, *args: Any) -> Any:
        """Call an SFTP function, mapping a dropped link to ConnectionLost."""
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except (OSError, EOFError, Exception) as exc:
            if isinstance(exc, IOError) and getattr(exc, "errno", None) is not None:
                raise TargetUnreachableError(f"{self.name}: SFTP {fn.__name__} failed: {exc}") from None
            raise ConnectionLost(f"{self.name}: SFTP {fn.__name__} on {self.where} failed: {exc or type(exc).__name__}") from None

    def exists(self, remote: str) -> bool:
        try:
            self._guard(self._sftp_client().stat, remote)
            return True
        except FileNotFoundError:
            return False

    def _mkdirs(self, remote_dir: str) -> None:
        sftp = self._sftp_client()
        root = "/" if remote_dir.startswith("/") else ""
        parts = [p for p in remote_dir.split("/") if p]
        for i in range(1, len(parts) + 1):
            path = root + "/".join(parts[:i])
            try:
                self._guard(sftp.stat, path)
            except FileNotFoundError:
                self._guard(sftp.mkdir, path)

    def upload(self, local: Path, remote: str) -> None:
        sftp = self._sftp_client()
        self._mkdirs(remote.rsplit("/", 1)[0])
        tmp = f"{remote}.{uuid.uuid4().hex[:8]}.part"
        self._guard(sftp.put, str(local), tmp)
        self._guard(sftp.posix_rename, tmp, remote)

    def _session(self) -> Any:
        self.connect()
        try:
            chan = self._client.get_transport().open_session(timeout=self.connect_timeout)
        except Exception as exc:
            raise ConnectionLost(f"{self.name}: cannot open a session on {self.where}: {exc}") from None
        return chan

    def start(self, argv: Sequence[str]) -> AgentChannel:
        chan = self._session()
        try:
            chan.exec_command(quote_command(argv))
        except Exception as exc:
            raise ConnectionLost(f"{self.name}: cannot start the agent on {self.where}: {exc}") from None
        return _SSHChannel(chan, f"target {self.name} ({self.where})")

    def run(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        chan = self._session()
        try:
            chan.settimeout(timeout)
            chan.exec_command(quote_command(argv))
            out = chan.makefile("rb").read().decode(errors="replace")
            err = chan.makefile_stderr("rb").read().decode(errors="replace")
            return chan.recv_exit_status(), out, err
        except Exception as exc:
            raise ConnectionLost(f"{self.name}: command failed on {self.where}: {exc}") from None
        finally:
            chan.close()
