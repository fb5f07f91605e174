"""SSHTransport: a board reached over SSH with paramiko (key auth, checked host keys, SFTP uploads).

Host keys are checked against known_hosts; an unknown key is refused with a message saying
how to add it, unless the profile opts into trust-on-first-use. Every paramiko failure is
turned into one readable TargetUnreachableError (ConnectionLost when a retry may help).
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

from device_agents.transport import AgentChannel, ConnectionLost, Transport, quote_command
from edgeprune._optional import require
from edgeprune.errors import BadInputError, TargetUnreachableError


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

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def connect(self) -> None:
        if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
            return
        self.close()
        if self.key and not os.path.isfile(self.key):
            raise BadInputError(f"{self.name}: ssh key file not found: {self.key}")
        paramiko = require("paramiko")
        client = paramiko.SSHClient()
        if self.known_hosts.is_file():
            client.load_host_keys(str(self.known_hosts))
        policy = paramiko.AutoAddPolicy() if self.trust_on_first_use else paramiko.RejectPolicy()
        client.set_missing_host_key_policy(policy)
        self._connect(paramiko, client)
        if self.trust_on_first_use:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            client.save_host_keys(str(self.known_hosts))
        client.get_transport().set_keepalive(5)
        self._client = client

    def _connect(self, paramiko: Any, client: Any) -> None:
        """client.connect with timeouts; paramiko's exceptions become one-line errors."""
        t = self.connect_timeout
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=self.key, timeout=t,
                           banner_timeout=t, auth_timeout=t, channel_timeout=t, allow_agent=False,
                           look_for_keys=self.key is None)
        except paramiko.BadHostKeyException:
            client.close()
            raise TargetUnreachableError(
                f"{self.name}: the host key of {self.host}:{self.port} does not match {self.known_hosts} "
                f"(possible man-in-the-middle); if the device was reinstalled remove the old key with "
                f"ssh-keygen -R '[{self.host}]:{self.port}' -f {self.known_hosts}") from None
        except paramiko.AuthenticationException:
            client.close()
            raise TargetUnreachableError(f"{self.name}: {self.where} refused the key {self.key or '(default keys)'}") from None
        except paramiko.SSHException as exc:
            client.close()
            if "known_hosts" in str(exc):
                raise TargetUnreachableError(
                    f"{self.name}: the host key of {self.host}:{self.port} is not in {self.known_hosts}; check it "
                    f"and add it (ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}) or set "
                    f"trust_on_first_use: true in the profile") from None
            raise ConnectionLost(f"{self.name}: ssh to {self.where} failed: {exc}") from None
        except (OSError, EOFError) as exc:
            client.close()
            reason = "timed out" if isinstance(exc, socket.timeout) else (getattr(exc, "strerror", None) or str(exc))
            raise ConnectionLost(f"{self.name}: cannot reach {self.host}:{self.port} ({reason})") from None

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
