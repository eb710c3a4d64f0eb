"""systemd, as the node runtime speaks to it: sd_notify and the journal, both
through systemd-python (libsystemd), and one logging handler for every record.

A record goes to the journal natively (PRIORITY from its level, SYSLOG_IDENTIFIER,
and KUBERMESH_* fields from `extra={"fields": {...}}`) and, as one line for
people, to the console (stdout; under the unit that is /dev/console). Outside
systemd (the lab, tests) the journal part is skipped and notify does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

from systemd import daemon, journal

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "kubermesh-agent"  # the unit's name: journalctl -t kubermesh-agent
# Python's levels to syslog priorities; NOTICE sits between INFO and WARNING.
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
_PRIORITY = {logging.DEBUG: journal.LOG_DEBUG, logging.INFO: journal.LOG_INFO,
             NOTICE: journal.LOG_NOTICE, logging.WARNING: journal.LOG_WARNING,
             logging.ERROR: journal.LOG_ERR, logging.CRITICAL: journal.LOG_CRIT}


def notify(**fields: str) -> bool:
    """sd_notify(3): e.g. notify(READY="1", STATUS="links"). True if systemd got it."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    return bool(daemon.notify("\n".join(f"{k}={v}" for k, v in fields.items())))


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, if systemd asked this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class NodeLogHandler(logging.Handler):
    """Every record to the journal (native fields) and as a line to the console."""

    def __init__(self, console: IO[str] | None = None, journal_socket: str = JOURNAL_SOCKET,
                 timestamps: bool = False) -> None:
        super().__init__()
        self.console = console if console is not None else sys.stdout
        self.to_journal = os.path.exists(journal_socket)
        # The journal stamps records itself; a lab node's log file needs its own.
        self.timestamps = timestamps

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            stamp = time.strftime("%H:%M:%S ", time.localtime(record.created)) \
                if self.timestamps else ""
            level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
            self.console.write(f"{stamp}kubermesh: {level}{message}\n")
            self.console.flush()
        except Exception:
            self.handleError(record)
        if not self.to_journal:
            return
        try:
            fields: dict[str, Any] = getattr(record, "fields", None) or {}
            journal.send(message, PRIORITY=str(_PRIORITY.get(record.levelno, journal.LOG_INFO)),
                         SYSLOG_IDENTIFIER=IDENTIFIER, CODE_FILE=record.pathname,
                         CODE_LINE=record.lineno, CODE_FUNC=record.funcName,
                         **{f"KUBERMESH_{k.upper()}": str(v) for k, v in fields.items()})
        except Exception:
            self.handleError(record)


def setup_logging(debug: bool = False, timestamps: bool = False) -> logging.Logger:
    """The runtime's one logging path: the `kubermesh` logger through NodeLogHandler."""
    log = logging.getLogger("kubermesh")
    log.handlers[:] = [NodeLogHandler(timestamps=timestamps)]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    return log
