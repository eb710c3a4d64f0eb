"""FRR's daemons asked directly over their vty sockets, as vtysh does, without vtysh.

Each daemon listens on `<rundir>/<daemon>.vty`. A command goes as a string
ending in NUL; the answer is the output, then three NULs and the command's
status byte (0 is success). One connection per daemon is kept open. This spares
the agent a vtysh process per question: vtysh loads its whole command tree at
start, which costs a real PC milliseconds and an emulated one seconds.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

TIMEOUT = 10.0
END = b"\0\0\0"


class VtyError(Exception):
    pass


class Vty:
    def __init__(self, rundir: Path = Path("/run/frr"), timeout: float = TIMEOUT) -> None:
        self.rundir = rundir
        self.timeout = timeout
        self.socks: dict[str, socket.socket] = {}

    def command(self, daemon: str, command: str) -> str:
        """The daemon's answer to one command; VtyError if it is down or refuses."""
        try:
            sock = self._connect(daemon)
            sock.sendall(command.encode() + b"\0")
            data = b""
            while not (len(data) >= 4 and data[-4:-1] == END):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise VtyError(f"{daemon}: connection closed")
                data += chunk
        except OSError as e:
            self._drop(daemon)
            raise VtyError(f"{daemon}: {e}") from e
        except VtyError:
            self._drop(daemon)
            raise
        if data[-1] != 0:
            raise VtyError(f"{daemon}: `{command}` failed ({data[-1]}): "
                           f"{data[:-4].decode(errors='replace').strip()}")
        return data[:-4].decode(errors="replace")

    def json(self, daemon: str, command: str) -> dict[str, Any]:
        """A `... json` command's answer; {} when the daemon is down or says nothing."""
        try:
            out = self.command(daemon, command)
            data: dict[str, Any] = json.loads(out) if out.strip() else {}
        except (VtyError, json.JSONDecodeError):
            return {}
        return data

    def up(self, daemon: str) -> bool:
        try:
            self.command(daemon, "show version")
        except VtyError:
            return False
        return True

    def _connect(self, daemon: str) -> socket.socket:
        sock = self.socks.get(daemon)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.rundir / f"{daemon}.vty"))
            except OSError:
                sock.close()
                raise
            self.socks[daemon] = sock
        return sock

    def _drop(self, daemon: str) -> None:
        sock = self.socks.pop(daemon, None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        for daemon in list(self.socks):
            self._drop(daemon)
