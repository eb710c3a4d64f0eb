"""The two systemd protocols the agent speaks: sd_notify and the journal's native
protocol (structured fields). Both are a datagram on a unix socket; doing them
here avoids a compiled dependency. Outside systemd both are no-ops."""

from __future__ import annotations

import os
import socket
import sys

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITY = {"error": 3, "warning": 4, "notice": 5, "info": 6}


def notify(**fields: str) -> bool:
    """sd_notify(3): e.g. notify(READY="1", STATUS="links"). True if sent."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(message)
    return True


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, if systemd asked this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def log(message: str, priority: str = "info", **fields: str) -> None:
    """One line for people on stdout (journal and console under the unit), and the
    same with structured fields (KUBERMESH_*) in the journal when it is there."""
    print(message, flush=True, file=sys.stdout)
    if not os.path.exists(JOURNAL_SOCKET):
        return
    items = {"MESSAGE": message, "PRIORITY": str(PRIORITY[priority]),
             "SYSLOG_IDENTIFIER": "kubermesh-agent"}
    items.update({f"KUBERMESH_{k.upper()}": v for k, v in fields.items()})
    datagram = b"".join(_field(k, v) for k, v in items.items())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(datagram, JOURNAL_SOCKET)
    except OSError:
        pass  # the journal being away must not stop the agent


def _field(key: str, value: str) -> bytes:
    data = value.encode()
    if b"\n" in data:  # the protocol's binary-safe form
        return key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
    return key.encode() + b"=" + data + b"\n"
