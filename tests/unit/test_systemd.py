"""How the runtime speaks to systemd: sd_notify, the watchdog, and one log
handler for the journal (native fields) and the console (a line per record)."""

from __future__ import annotations

import io
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from systemd import journal

from firstboot import systemd
from firstboot.systemd import NOTICE, NodeLogHandler


def test_notify_needs_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify(READY="1") is False


def test_sd_notify_and_watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify(READY="1", STATUS="links")
        assert server.recv(4096) == b"READY=1\nSTATUS=links"
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None  # meant for another process
    monkeypatch.delenv("WATCHDOG_PID")
    assert systemd.watchdog_interval() == 5.0


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("kubermesh.test-systemd")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.handlers.clear()
    log.propagate = True


def test_one_console_line_per_record(tmp_path: Path, logger: logging.Logger) -> None:
    console = io.StringIO()
    h = NodeLogHandler(console, journal_socket=str(tmp_path / "no-journal"))
    assert h.to_journal is False
    logger.addHandler(h)
    logger.info("loopback %s on lo", "fd00::1", extra={"fields": {"node_id": "ab"}})
    logger.log(NOTICE, "stage links -> adjacencies")
    logger.warning("yielding pod block")
    logger.error("overlay: boom")
    assert console.getvalue().splitlines() == [
        "kubermesh: loopback fd00::1 on lo", "kubermesh: stage links -> adjacencies",
        "kubermesh: warning: yielding pod block", "kubermesh: error: overlay: boom"]


def test_an_exception_is_told_with_its_traceback(tmp_path: Path,
                                                 logger: logging.Logger) -> None:
    console = io.StringIO()
    logger.addHandler(NodeLogHandler(console, journal_socket=str(tmp_path / "no-journal")))
    try:
        raise KeyError("x")
    except KeyError:
        logger.exception("unexpected")
    out = console.getvalue()
    assert out.startswith("kubermesh: error: unexpected\nTraceback (most recent call last):")
    assert out.endswith("KeyError: 'x'\n")


def test_timestamps_for_a_lab_nodes_log_file(tmp_path: Path, logger: logging.Logger) -> None:
    console = io.StringIO()
    logger.addHandler(NodeLogHandler(console, str(tmp_path / "none"), timestamps=True))
    logger.info("hello")
    line = console.getvalue()
    assert line[2] == line[5] == ":" and line[8:] == " kubermesh: hello\n"


def test_records_go_to_the_journal_with_their_fields(tmp_path: Path, logger: logging.Logger,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def sendv(*lines: str) -> None:
        # The C call: systemd-python's own send() has already built the fields, so
        # a value of the wrong type fails here as it would on a node.
        fields = dict(line.split("=", 1) for line in lines)
        sent.append((fields.pop("MESSAGE"), fields))

    monkeypatch.setattr(journal, "sendv", sendv)
    sock = tmp_path / "socket"
    sock.touch()
    console = io.StringIO()
    h = NodeLogHandler(console, journal_socket=str(sock))
    assert h.to_journal
    logger.addHandler(h)
    logger.warning("b: boom", extra={"fields": {"controller": "b", "error": "boom"}})
    logger.log(NOTICE, "mesh joined")
    ((m1, f1), (m2, f2)) = sent
    assert m1 == "b: boom" and f1["PRIORITY"] == "4" and f1["SYSLOG_IDENTIFIER"] == (
        "kubermesh-agent")
    assert f1["KUBERMESH_CONTROLLER"] == "b" and f1["KUBERMESH_ERROR"] == "boom"
    assert f1["CODE_FILE"] == __file__ and f1["CODE_FUNC"] == (
        "test_records_go_to_the_journal_with_their_fields")
    assert m2 == "mesh joined" and f2["PRIORITY"] == "5"
    assert f1["CODE_LINE"].isdigit()
    assert console.getvalue() == (  # and the console too
        "kubermesh: warning: b: boom\nkubermesh: mesh joined\n")


def test_without_a_journal_nothing_fails(logger: logging.Logger,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    h = NodeLogHandler()  # the real socket: absent in a container, present on a node
    logger.addHandler(h)
    logger.warning("hello %d", 1, extra={"fields": {"n": 1}})
    assert capsys.readouterr().out == "kubermesh: warning: hello 1\n"


def test_a_broken_console_does_not_raise(tmp_path: Path, logger: logging.Logger,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(5, "I/O error")

    monkeypatch.setattr(logging, "raiseExceptions", False)  # as a service would run
    logger.addHandler(NodeLogHandler(Broken(), journal_socket=str(tmp_path / "none")))
    logger.error("lost")  # must not raise


def test_setup_logging_is_the_one_path() -> None:
    log = logging.getLogger("kubermesh")
    saved = (log.handlers[:], log.level, log.propagate)
    try:
        out = systemd.setup_logging(debug=True, timestamps=True)
        assert out is log and log.level == logging.DEBUG and log.propagate is False
        (h,) = log.handlers
        assert isinstance(h, NodeLogHandler) and h.timestamps
        systemd.setup_logging()
        assert len(log.handlers) == 1 and log.level == logging.INFO
    finally:
        log.handlers[:], log.level, log.propagate = saved
