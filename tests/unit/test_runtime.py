"""The node runtime's loop: isolation of a failing controller, backoff, wake-ups
(`after`, `post`), and stopping. No netlink: Runtime(None)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest

from firstboot import runtime
from firstboot.runtime import Controller, Runtime


class Counting(Controller):
    """Counts its runs; raises `error` when set; returns `changed`."""

    name = "counting"

    def __init__(self) -> None:
        self.runs = 0
        self.error: Exception | None = None
        self.changed = False
        self.closed = False

    def reconcile(self) -> bool:
        self.runs += 1
        if self.error is not None:
            raise self.error
        return self.changed

    def close(self) -> None:
        self.closed = True


class A(Counting):
    name = "a"


class B(Counting):
    name = "b"


class C(Counting):
    name = "c"


class AfterA(Counting):
    name = "after-a"
    after = ("a",)


class Ticking(Counting):
    name = "tick"
    period = 0.02


@pytest.fixture(autouse=True)
def outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def rt() -> Iterator[Runtime]:
    r = Runtime(None)
    yield r
    if not r._stopping:  # run() closes its wake-up pipe itself
        r.stop("test over")
        for fd in (r._wake_r, r._wake_w):
            os.close(fd)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "kubermesh.runtime" and r.levelno == logging.ERROR]


def test_a_failing_controller_keeps_no_other_from_running(
        rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kubermesh")
    a, b, c = A(), B(), C()
    rt.add(a, b, c)
    assert {n: s.state for n, s in rt.registry.status.items()} == {
        "a": "pending", "b": "pending", "c": "pending"}
    b.error = RuntimeError("boom")
    before = time.time()
    assert rt.run_pass() == ["a", "b", "c"]
    st = rt.registry.status
    assert st["a"].state == st["c"].state == "ok"
    assert (st["b"].state, st["b"].error) == ("error", "boom")
    assert before <= st["b"].since <= time.time()
    assert rt.registry.errors() == {"b": "boom"}
    assert errors(caplog) == ["b: boom (retrying in 1 s)"]
    assert not caplog.records[-1].exc_info  # a RuntimeError says enough by itself

    # Retried at its time, and not said again while the error stays the same.
    rt.due["b"] = 0.0
    assert rt.run_pass() == ["b"]
    assert b.runs == 2 and len(errors(caplog)) == 1
    assert rt.failures["b"] == 2 and rt.due["b"] - time.monotonic() > 1.5  # backoff doubles
    since = st["b"].since
    # A different error is news.
    rt.due["b"] = 0.0
    b.error = RuntimeError("bang")
    rt.run_pass()
    assert errors(caplog)[-1] == "b: bang (retrying in 4 s)" and len(errors(caplog)) == 2
    assert rt.registry.status["b"].since >= since

    # It recovers: ok again, said once.
    rt.due["b"] = 0.0
    b.error = None
    caplog.clear()
    assert rt.run_pass() == ["b"]
    assert rt.registry.status["b"].state == "ok" and rt.registry.errors() == {}
    assert rt.failures["b"] == 0
    assert [r.getMessage() for r in caplog.records] == ["b: recovered"]


def test_a_failing_controller_waits_for_its_retry_even_when_woken(rt: Runtime) -> None:
    a, b = A(), B()
    rt.add(a, b)
    b.error = OSError(5, "I/O error")
    rt.run_pass()
    rt.post("b")
    rt.post("a")
    assert rt.run_pass() == ["a"]
    assert b.runs == 1
    rt.due["b"] = 0.0  # its retry time
    assert rt.run_pass() == ["b"]
    assert b.runs == 2


def test_the_backoff_doubles_up_to_its_limit(rt: Runtime) -> None:
    b = B()
    b.error = ValueError("bad")
    rt.add(b)
    waits = []
    for _ in range(8):
        rt.due["b"] = 0.0
        rt.run_pass()
        waits.append(round(rt.due["b"] - time.monotonic()))
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]


def test_an_unexpected_exception_is_logged_with_its_traceback(
        rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    b = B()
    b.error = KeyError("x")
    rt.add(b)
    rt.run_pass()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert rt.registry.status["b"].error == "'x'"
    b.error = Exception()
    rt.due["b"] = 0.0
    rt.run_pass()
    assert rt.registry.status["b"].error == "Exception"  # no message: its type


def test_after_runs_only_when_what_it_follows_changed(rt: Runtime) -> None:
    a, after = A(), AfterA()
    rt.add(a, after)
    assert rt.run_pass() == ["a", "after-a"]  # everything runs first
    rt.post("a")
    assert rt.run_pass() == ["a"]
    a.changed = True
    rt.post("a")
    assert rt.run_pass() == ["a", "after-a"]
    assert rt.run_pass() == []  # nothing woken, nothing due


def test_add_refuses_unknown_after_and_duplicates(rt: Runtime) -> None:
    with pytest.raises(ValueError, match=r"after-a runs after \['a'\]"):
        rt.add(AfterA())
    rt.add(A())
    with pytest.raises(ValueError, match="two controllers named a"):
        rt.add(A())
    with pytest.raises(ValueError, match="two controllers named b"):
        rt.add(B(), B())
    assert [c.name for c in rt.controllers] == ["a", "b"]


def run_in_thread(rt: Runtime) -> tuple[threading.Thread, list[str]]:
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(rt.run()), daemon=True)
    t.start()
    return t, result


def wait_for(condition: object, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(condition) and condition():
            return True
        time.sleep(0.005)
    return False


def test_run_returns_the_stop_reason_and_closes_the_controllers() -> None:
    rt = Runtime(None)
    tick, b = Ticking(), B()
    rt.add(tick, b)
    t, result = run_in_thread(rt)
    assert wait_for(lambda: tick.runs >= 3), "a periodic controller runs again"
    rt.stop("TEST")
    t.join(3)
    assert not t.is_alive() and result == ["TEST"]
    assert tick.closed and b.closed
    assert b.runs == 1  # not periodic, never woken: ran once


def test_post_from_another_thread_wakes_its_controller() -> None:
    rt = Runtime(None)
    b = B()
    rt.add(b)
    t, result = run_in_thread(rt)
    assert wait_for(lambda: b.runs == 1)
    started = time.monotonic()
    threading.Thread(target=rt.post, args=("b",)).start()
    assert wait_for(lambda: b.runs == 2), "post did not wake the loop"
    assert time.monotonic() - started < 1.0  # not the IDLE timer
    rt.stop("TEST")
    t.join(3)
    assert result == ["TEST"]


def test_a_controller_failing_to_close_does_not_stop_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    class Sticky(A):
        def close(self) -> None:
            raise RuntimeError("stuck")

    rt = Runtime(None)
    sticky, b = Sticky(), B()
    rt.add(sticky, b)
    rt.stop("TEST")
    assert rt.run() == "TEST"
    assert b.closed
    assert "a: stopping: stuck" in caplog.text


def test_a_woken_failing_controller_does_not_spin_the_loop() -> None:
    rt = Runtime(None)
    b = B()
    b.error = RuntimeError("boom")
    rt.add(b)
    t, _ = run_in_thread(rt)
    assert wait_for(lambda: b.runs == 1)
    rt.post("b")  # e.g. a probe thread's news, while b waits for its retry
    time.sleep(0.2)
    passes = rt.passes
    rt.stop("TEST")
    t.join(3)
    assert passes < 10


def test_retry_constants() -> None:
    assert runtime.RETRY_FIRST <= runtime.RETRY_MAX <= runtime.IDLE


def test_lost_netlink_messages_make_every_controller_read_again() -> None:
    """ENOBUFS from the subscription: each controller forgets what the lost
    messages would have said (overflow) and runs in the next pass."""
    forgot: list[str] = []

    class Forgetful(Counting):
        name = "forgetful"

        def overflow(self) -> None:
            forgot.append(self.name)

    rt = Runtime(None)
    c = Forgetful()
    rt.add(c)
    rt.run_pass()
    assert c.runs == 1 and not rt.dirty
    rt._messages.put(runtime.OVERFLOW)
    rt._dispatch()
    assert forgot == ["forgetful"] and "forgetful" in rt.dirty
    rt.run_pass()
    assert c.runs == 2


def notified(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the runtime tells systemd, field names per message (notify recorded)."""
    said: list[str] = []

    def notify(**fields: str) -> bool:
        said.append(",".join(fields))
        return True

    monkeypatch.setattr(runtime, "notify", notify)
    return said


def test_ready_once_the_named_controller_has_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """READY=1 as soon as `ready_after` has run (frr.service needs only frr.conf),
    not after the whole first pass."""
    said = notified(monkeypatch)

    class Recording(Counting):
        def reconcile(self) -> bool:
            said.append(self.name)
            return super().reconcile()

    class First(Recording):
        name = "first"

    class Second(Recording):
        name = "second"
        period = 0.05

    rt = Runtime(None)
    rt.add(First(), Second())
    threading.Timer(0.3, rt.stop, args=("TEST",)).start()
    assert rt.run(ready_after="first") == "TEST"
    assert said[:3] == ["first", "READY,STATUS", "second"], said
    assert said.count("READY,STATUS") == 1


def test_ready_waits_until_the_named_controller_settles(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A `ready_after` controller that has run but not settled (frr.conf waiting for
    udev's NIC names) holds READY=1 back; a failing one does not."""
    said = notified(monkeypatch)

    class Waiting(Counting):
        name = "waiting"
        period = 0.02

        def reconcile(self) -> bool:
            said.append(f"run {self.runs + 1}")
            return super().reconcile()

        def settled(self) -> bool:
            return self.runs >= 3

    rt = Runtime(None)
    rt.add(Waiting())
    threading.Timer(0.5, rt.stop, args=("TEST",)).start()
    assert rt.run(ready_after="waiting") == "TEST"
    assert said[:4] == ["run 1", "run 2", "run 3", "READY,STATUS"], said
    assert said.count("READY,STATUS") == 1

    class Failing(Counting):
        name = "failing"

        def reconcile(self) -> bool:
            raise RuntimeError("no frr.conf")

        def settled(self) -> bool:
            return False

    said.clear()
    rt = Runtime(None)
    rt.add(Failing())
    threading.Timer(0.3, rt.stop, args=("TEST",)).start()
    assert rt.run(ready_after="failing") == "TEST"
    assert said.count("READY,STATUS") == 1

    class Stuck(Counting):  # runs fine, never settles (FRR's daemons never all answer)
        name = "stuck"
        period = 0.02

        def settled(self) -> bool:
            return False

    said.clear()
    monkeypatch.setattr(runtime, "READY_HOLD_MAX", 0.2)
    rt = Runtime(None)
    rt.add(Stuck())
    threading.Timer(0.5, rt.stop, args=("TEST",)).start()
    assert rt.run(ready_after="stuck") == "TEST"
    assert said.count("READY,STATUS") == 1


@pytest.mark.parametrize(("handover", "stopping"), [(False, True), (True, False)])
def test_stopping_is_told_unless_the_process_hands_over(monkeypatch: pytest.MonkeyPatch,
                                                        handover: bool, stopping: bool) -> None:
    """A runtime that ends to exec its successor (join mode, then the full runtime with
    the site) must not tell systemd STOPPING=1: systemd would start the stop timeout
    and kill the successor 90 s later."""
    said = notified(monkeypatch)
    rt = Runtime(None)
    rt.add(Counting())
    threading.Timer(0.2, rt.stop, args=("joined", handover)).start()
    assert rt.run() == "joined"
    assert ("STOPPING" in said) is stopping, said
