"""The node runtime: one loop that runs every node-side concern as a controller.

One netlink subscription (the union of the groups the controllers ask for),
timers, a wake-up pipe for threads (health probes), SIGTERM, sd_notify
READY/STATUS/WATCHDOG. Each controller says what wakes it: netlink messages it
`wants`, a `period`, or a change in the output of a controller it runs `after`.
A pass runs the woken controllers in order; one that raises is reported
(`{state, error, since}` in the registry, once in the log at priority err) and
retried with backoff, and never keeps the others from running.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

from firstboot.systemd import notify, watchdog_interval

log = logging.getLogger("kubermesh.runtime")

RETRY_FIRST = 1.0  # seconds before a failed controller runs again; doubles up to
RETRY_MAX = 30.0
SETTLE = 0.02  # messages arriving this close together are one batch (a SPF run)
BATCH_MAX = 0.2  # but a batch ends after this long: passes and watchdog pings go on
IDLE = 30.0  # the loop wakes at least this often
# READY=1 waits for `ready_after` to settle at most this long (well inside the
# unit's TimeoutStartSec=5min), so that a stuck dependency never fails the start.
READY_HOLD_MAX = 120.0
OVERFLOW = object()  # in the message queue: the kernel dropped messages


class Controller:
    """One concern: typed inputs to desired state (pure), applied by diff, reported."""

    name: ClassVar[str]
    period: ClassVar[float | None] = None  # run at least this often (seconds)
    groups: ClassVar[int] = 0  # rtnetlink multicast groups it needs
    after: ClassVar[tuple[str, ...]] = ()  # controllers whose changes wake it

    def wants(self, msg: Any) -> bool:
        """Whether a netlink message wakes it (it is then handed to `message`)."""
        return False

    def message(self, msg: Any) -> None:
        """Take one wanted netlink message into the controller's model."""

    def reconcile(self) -> bool:
        """Make the world match; True when this controller's output changed."""
        raise NotImplementedError

    def close(self) -> None:
        """On stop: undo what must not outlive the runtime."""

    def next_run(self) -> float | None:
        """Seconds until it should run again if nothing wakes it (default: `period`)."""
        return self.period

    def overflow(self) -> None:
        """Netlink messages were lost: forget what they would have said."""

    def settled(self) -> bool:
        """As the runtime's `ready_after`: whether what units ordered after the
        runtime need is done (frr.conf written); READY=1 waits for it."""
        return True


@dataclass(frozen=True)
class ControllerStatus:
    state: str  # "pending" (not run yet), "ok" or "error"
    error: str = ""
    since: float = 0.0  # wall-clock time of the last change of state or error


class Registry:
    """What each controller last reported."""

    def __init__(self, names: Sequence[str]) -> None:
        now = time.time()
        self.status = {n: ControllerStatus("pending", "", now) for n in names}

    def report(self, name: str, error: str = "") -> bool:
        """Record a result; True when it differs from the last one."""
        state = "error" if error else "ok"
        old = self.status[name]
        if old.state == state and old.error == error:
            return False
        self.status[name] = ControllerStatus(state, error, time.time())
        return True

    def errors(self) -> dict[str, str]:
        return {n: s.error for n, s in self.status.items() if s.state == "error"}


class Stop(Exception):
    pass


class Runtime:
    def __init__(self, netlink: Callable[[int], Any] | None = None) -> None:
        """`netlink(groups)` makes the event socket (a bound pyroute2 IPRoute) when
        the runtime starts; None for no netlink at all (tests)."""
        self.controllers: list[Controller] = []
        self.registry = Registry([])
        self.due: dict[str, float] = {}  # monotonic; 0: run now
        self.failures: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.passes = 0
        self._netlink = netlink
        self.events: Any = None
        self._receiving = False
        self._posted: set[str] = set()
        self._messages: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping: str | None = None

    def add(self, *controllers: Controller) -> None:
        """Controllers run in the order they are added, after those they name."""
        for c in controllers:
            names = [x.name for x in self.controllers]
            if c.name in names:
                raise ValueError(f"two controllers named {c.name}")
            unknown = [a for a in c.after if a not in names]
            if unknown:
                raise ValueError(f"{c.name} runs after {unknown}, which do not come before it")
            self.controllers.append(c)
            self.registry.status[c.name] = ControllerStatus("pending", "", time.time())
            self.due[c.name] = 0.0
            self.failures[c.name] = 0
            self.dirty.add(c.name)

    def _open(self) -> None:
        groups = 0
        for c in self.controllers:
            groups |= c.groups
        if not self._receiving and self._netlink is not None and groups:
            self._receiving = True
            subscribed = threading.Event()
            threading.Thread(target=self._receive, args=(groups, subscribed), name="netlink",
                             daemon=True).start()
            subscribed.wait(30)

    def _receive(self, groups: int, subscribed: threading.Event) -> None:
        """The one netlink subscription, made and read in a thread of its own
        (pyroute2 reads ahead into a buffer of its own, so select() on its socket
        misses messages of a burst, and its sockets belong to the thread that made
        them). Messages are handed to the loop, which alone touches controllers."""
        try:
            assert self._netlink is not None
            self.events = self._netlink(groups)
            subscribed.set()
            while not self._stopping:
                try:
                    for msg in self.events.get():
                        self._messages.put(msg)
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    # The kernel dropped messages (a burst beyond the socket's
                    # buffer): whatever they said, read everything again.
                    self._messages.put(OVERFLOW)
                self._wake()
        except Exception as e:  # the socket closed at stop, or netlink failed
            subscribed.set()
            if not self._stopping:
                self._messages.put(e)
                self._wake()

    # --- from other threads and signal handlers

    def post(self, name: str) -> None:
        """Wake controller `name` (thread-safe): a probe thread has news for it."""
        with self._lock:
            self._posted.add(name)
        self._wake()

    def stop(self, reason: str, handover: bool = False) -> None:
        """End run() with reason. `handover`: the process goes on as another
        program (exec) in the same service, so systemd is not told it is stopping:
        STOPPING=1 would start its stop timeout, and it would kill the successor."""
        self._stopping = reason
        self._handover = handover
        self._wake()

    _handover = False

    def _wake(self) -> None:
        # Full of wake-ups already, or closed: the runtime has stopped.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    ready = False
    _ready_after: str | None = None
    _started = 0.0

    def _say_ready(self, line: str) -> None:
        notify(READY="1", STATUS=line)
        self.ready = True

    def _holds_ready(self) -> bool:
        """The `ready_after` controller has not settled yet, has not failed, and has
        had less than READY_HOLD_MAX: a failing or stuck one (FRR's daemons never all
        answering) is reported, and READY=1 goes anyway."""
        c = next((c for c in self.controllers if c.name == self._ready_after), None)
        return (c is not None and self.failures[c.name] == 0 and not c.settled()
                and time.monotonic() - self._started < READY_HOLD_MAX)

    def stop_on_signals(self) -> None:
        def handler(signum: int, _: FrameType | None) -> None:
            self.stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # --- the loop

    def run_pass(self) -> list[str]:
        """Run every woken or due controller once, in order; return those that ran."""
        self._open()  # subscribed before the first reads: no change falls in between
        now = time.monotonic()
        with self._lock:
            self.dirty |= self._posted
            self._posted.clear()
        ran = []
        changed: set[str] = set()
        for c in self.controllers:
            woken = c.name in self.dirty or any(a in changed for a in c.after)
            due = now >= self.due[c.name]
            failing = self.failures[c.name] > 0
            if woken and failing:
                # It waits for its retry time, whatever woke it (and runs then).
                self.dirty.discard(c.name)
            if not (due if failing else (woken or due)):
                continue
            self.dirty.discard(c.name)
            ran.append(c.name)
            try:
                if c.reconcile():
                    changed.add(c.name)
            except Exception as e:
                self._failed(c, e)
                continue
            if self.failures[c.name]:
                log.log(25, "%s: recovered", c.name, extra={"fields": {"controller": c.name}})
            self.failures[c.name] = 0
            self.registry.report(c.name)
            self.due[c.name] = time.monotonic() + (c.next_run() or IDLE * 100)
            if not self.ready and c.name == self._ready_after and c.settled():
                self._say_ready(c.name)
        self.passes += 1
        return ran

    def _failed(self, c: Controller, e: Exception) -> None:
        n = self.failures[c.name] = self.failures[c.name] + 1
        retry = min(RETRY_MAX, RETRY_FIRST * 2 ** (n - 1))
        error = str(e) or type(e).__name__
        if self.registry.report(c.name, error):  # said once, not every retry
            log.error("%s: %s (retrying in %.0f s)", c.name, error, retry,
                      exc_info=not isinstance(e, (OSError, RuntimeError, ValueError)),
                      extra={"fields": {"controller": c.name, "error": error}})
        self.due[c.name] = time.monotonic() + retry

    def _read_events(self, timeout: float) -> None:
        """Wait up to `timeout` for netlink messages or a wake-up, then take the
        whole burst (messages within SETTLE of each other)."""
        ready, _, _ = select.select([self._wake_r], [], [], max(0.0, timeout))
        until = time.monotonic() + BATCH_MAX
        while ready and not self._stopping and time.monotonic() < until:
            os.read(self._wake_r, 4096)
            self._dispatch()
            ready, _, _ = select.select([self._wake_r], [], [], SETTLE)
        self._dispatch()

    def _dispatch(self) -> None:
        while True:
            try:
                msg = self._messages.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, Exception):
                raise RuntimeError(f"netlink subscription failed: {msg}") from msg
            if msg is OVERFLOW:
                log.warning("netlink messages were lost: reading the kernel's state again")
                for c in self.controllers:
                    c.overflow()
                    self.dirty.add(c.name)
                continue
            for c in self.controllers:
                if c.wants(msg):
                    c.message(msg)
                    self.dirty.add(c.name)

    def run(self, status: Callable[[], str] = lambda: "", ready_after: str | None = None) -> str:
        """Run until stopped; returns the reason. `status()` is the STATUS= line.
        READY=1 goes once `ready_after` has run successfully and settled (what the
        units ordered after this one need), else after the first pass."""
        ping = watchdog_interval()
        self._ready_after = ready_after
        self._started = time.monotonic()
        try:
            while not self._stopping:
                self.run_pass()
                line = status()
                if not self.ready and not self._holds_ready():
                    self._say_ready(line)
                elif ping is not None:
                    notify(WATCHDOG="1", STATUS=line)
                now = time.monotonic()
                wait = min(self.due.values()) - now
                if ping is not None:
                    wait = min(wait, ping)
                if self.dirty or self._posted:
                    wait = 0.0
                self._read_events(min(wait, IDLE))
        finally:
            if not self._handover:
                notify(STOPPING="1")
            for c in reversed(self.controllers):
                try:
                    c.close()
                except Exception as e:
                    log.error("%s: stopping: %s", c.name, e)
            # The netlink thread's socket goes with the process (it is a daemon
            # thread; pyroute2 sockets are closed by the thread that made them).
            # The wake-up pipe stays open: daemon threads (probes) may still post.
        return self._stopping or ""
