"""A STAND-IN for an Android device behind an adb server, for the emu-android target.

No phone or Android emulator can run here, so this small server speaks the adb server's host
protocol on a 127.0.0.1 port (reach it with ADB_SERVER_SOCKET=tcp:127.0.0.1:PORT and the real
`adb` client) and executes the device side on this host: `shell:` runs `sh -c` in a sandbox
directory inside the emulated target's cgroup, `sync:` implements SEND/RECV/STAT (v1).

Smart-socket framing: a request is 4 hex digits of length then the text; the answer is OKAY,
or FAIL followed by a 4-hex-length message. Only what `adb devices|get-state|shell|push|pull`
need is implemented; advertising no features keeps the client on shell v1 and sync v1.
"""
from __future__ import annotations

import argparse
import os
import socket
import socketserver
import struct
import subprocess
import threading
from pathlib import Path
from typing import Optional

ADB_VERSION = 41  # the adb client restarts a server that answers another version


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("client closed")
        data += chunk
    return data


def _okay_payload(text: str) -> bytes:
    data = text.encode()
    return b"OKAY" + b"%04x" % len(data) + data


def _fail(text: str) -> bytes:
    data = text.encode()
    return b"FAIL" + b"%04x" % len(data) + data


class Handler(socketserver.BaseRequestHandler):
    """One client connection: host requests until a transport is chosen, then a service."""

    server: "StandIn"

    def handle(self) -> None:
        sock = self.request
        try:
            while True:
                length = int(_recv_exact(sock, 4), 16)
                request = _recv_exact(sock, length).decode()
                if not self._host_request(sock, request):
                    return
        except (EOFError, ConnectionError, ValueError):
            return

    def _host_request(self, sock: socket.socket, req: str) -> bool:
        """Answer one request; True when the connection carries on with another request."""
        serial = self.server.serial
        if req == "host:version":
            sock.sendall(_okay_payload("%04x" % ADB_VERSION))
        elif req in ("host:devices", "host:devices-l"):
            sock.sendall(_okay_payload(f"{serial}\tdevice\n"))
        elif req.endswith(":features") or req == "host:host-features":
            sock.sendall(_okay_payload(""))
        elif req.endswith(":get-state"):
            sock.sendall(_okay_payload("device"))
        elif req.endswith(":get-serialno"):
            sock.sendall(_okay_payload(serial))
        elif req in (f"host:transport:{serial}", "host:transport-any", "host:transport-local"):
            sock.sendall(b"OKAY")
            return True
        elif req.startswith("host:tport:"):
            sock.sendall(b"OKAY" + struct.pack("<Q", 1))
            return True
        elif req.startswith("host:transport:") or req.startswith("host:tport"):
            sock.sendall(_fail(f"device '{req.split(':')[-1]}' not found"))
        elif req.startswith("shell:"):
            sock.sendall(b"OKAY")
            self._shell(sock, req[len("shell:"):])
        elif req == "sync:":
            sock.sendall(b"OKAY")
            self._sync(sock)
        elif req == "host:kill":
            sock.sendall(b"OKAY")
        else:
            sock.sendall(_fail(f"unsupported request {req!r} (adb stand-in)"))
        return False

    # ------------------------------------------------------------ shell (v1: raw stream)

    def _join_cgroup(self) -> None:
        for procs in self.server.cgroup_procs:
            with open(procs, "w") as fh:
                fh.write(str(os.getpid()))

    def _shell(self, sock: socket.socket, command: str) -> None:
        argv = ["/bin/sh", "-c", command] if command.strip() else ["/bin/sh"]
        proc = subprocess.Popen(argv, cwd=self.server.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, preexec_fn=self._join_cgroup, start_new_session=True)
        threading.Thread(target=self._feed_stdin, args=(sock, proc), daemon=True).start()
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            try:
                sock.sendall(chunk)
            except OSError:
                break
        proc.stdout.close()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        proc.wait()

    @staticmethod
    def _feed_stdin(sock: socket.socket, proc: subprocess.Popen) -> None:
        try:
            for chunk in iter(lambda: sock.recv(65536), b""):
                proc.stdin.write(chunk)
                proc.stdin.flush()
        except OSError:
            pass
        try:
            proc.stdin.close()
        except OSError:
            pass
        if proc.poll() is None:  # the client went away: so does everything it started
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass

    # ------------------------------------------------------------ sync v1

    def _path(self, remote: str) -> Path:
        return Path(remote) if remote.startswith("/") else Path(self.server.root) / remote

    def _sync(self, sock: socket.socket) -> None:
        while True:
            cmd, length = struct.unpack("<4sI", _recv_exact(sock, 8))
            if cmd == b"QUIT":
                return
            arg = _recv_exact(sock, length).decode()
            if cmd == b"STAT":
                sock.sendall(self._stat(arg))
            elif cmd == b"SEND":
                sock.sendall(self._send(sock, arg))
            elif cmd == b"RECV":
                self._recv(sock, arg)
            else:
                sock.sendall(b"FAIL" + struct.pack("<I", 11) + b"unsupported")
                return

    def _stat(self, remote: str) -> bytes:
        try:
            st = os.stat(self._path(remote))
        except OSError:
            return b"STAT" + struct.pack("<III", 0, 0, 0)
        return b"STAT" + struct.pack("<III", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime))

    def _send(self, sock: socket.socket, arg: str) -> bytes:
        remote, _, mode = arg.rpartition(",")
        path = self._path(remote)
        data = bytearray()
        while True:
            kind, n = struct.unpack("<4sI", _recv_exact(sock, 8))
            if kind == b"DATA":
                data += _recv_exact(sock, n)
            elif kind == b"DONE":
                break
            else:
                return b"FAIL" + struct.pack("<I", 12) + b"bad SEND seq"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(data))
            os.chmod(path, int(mode) & 0o777 if mode.isdigit() else 0o644)
        except OSError as exc:
            msg = str(exc).encode()
            return b"FAIL" + struct.pack("<I", len(msg)) + msg
        return b"OKAY" + struct.pack("<I", 0)

    def _recv(self, sock: socket.socket, remote: str) -> None:
        try:
            data = self._path(remote).read_bytes()
        except OSError as exc:
            msg = str(exc).encode()
            sock.sendall(b"FAIL" + struct.pack("<I", len(msg)) + msg)
            return
        for i in range(0, len(data), 64 * 1024):
            chunk = data[i:i + 64 * 1024]
            sock.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        sock.sendall(b"DONE" + struct.pack("<I", 0))


class StandIn(socketserver.ThreadingTCPServer):
    """The stand-in server: one serial, a sandbox root, the cgroup its commands join."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, serial: str, root: str, cgroup_procs: Optional[list[str]] = None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.serial, self.root, self.cgroup_procs = serial, root, list(cgroup_procs or [])


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="adb server stand-in for emulated Android targets")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--serial", default="emulator-5554")
    p.add_argument("--root", required=True, help="sandbox directory: the device's working directory")
    p.add_argument("--cgroup-procs", action="append", default=[], help="cgroup.procs file commands join")
    args = p.parse_args(argv)
    Path(args.root).mkdir(parents=True, exist_ok=True)
    with StandIn(args.port, args.serial, args.root, args.cgroup_procs) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
