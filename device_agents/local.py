"""LocalTransport: the agent as a subprocess of this host. The reference transport."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from device_agents.transport import AgentChannel, ConnectionLost, Transport


class _ProcessChannel(AgentChannel):
    """An AgentChannel over a local process's pipes; closing ends its process group."""

    def __init__(self, proc: subprocess.Popen, describe: str) -> None:
        self.proc = proc
        super().__init__(proc.stdout.read1, self._write_flush, proc.stderr.read1, describe)

    def _write_flush(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self) -> None:
        super().close()
        end_process_group(self.proc)


def end_process_group(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """Close stdin, then SIGTERM and SIGKILL the process group if it lingers."""
    try:
        proc.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


class LocalTransport(Transport):
    """Runs the agent on this machine, in a subprocess with its own process group."""

    kind = "local"

    def __init__(self, name: str, workdir: Optional[str] = None, **kw: float) -> None:
        super().__init__(name, **kw)
        default = Path(tempfile.gettempdir()) / f"edgeprune-agent-{os.getuid()}"
        self._workdir = str(Path(workdir).expanduser() if workdir else default)

    def connect(self) -> None:
        Path(self._workdir).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        pass

    def workdir(self) -> str:
        return self._workdir

    def exists(self, remote: str) -> bool:
        return os.path.exists(remote)

    def upload(self, local: Path, remote: str) -> None:
        dest = Path(remote)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)

    def start(self, argv: Sequence[str]) -> AgentChannel:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise ConnectionLost(f"{self.name}: cannot start the agent ({exc})") from exc
        return _ProcessChannel(proc, f"target {self.name}")

    def run(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        try:
            out = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConnectionLost(f"{self.name}: {exc}") from exc
        return out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")
