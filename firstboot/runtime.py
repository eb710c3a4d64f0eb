"""What the long-running node agents share: logging, stopping on signals, and a
netlink watcher that wakes an agent's loop when the kernel reports a change."""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
from types import FrameType

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

# Linux rtnetlink group for nexthop objects (zebra installs routes with them); it is
# above 31, so it is joined with setsockopt rather than the bind() bitmask.
RTNLGRP_NEXTHOP = 32

log = logging.getLogger("kubermesh")


def setup_logging(name: str, debug: bool = False) -> logging.Logger:
    """One line per event on stderr: the journal (or the lab's node log) keeps it."""
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if debug else logging.INFO,
                        format=f"%(asctime)s {name}: %(message)s")
    return logging.getLogger(f"kubermesh.{name}")


class Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT; a BaseException, so the loops'
    `except Exception` (report and retry) never swallows it."""


def stop_on_signals() -> None:
    def handler(signum: int, _: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class NetlinkWatch:
    """Routes, addresses and links changing in this network namespace.

    A thread reads the multicast groups and puts one token per batch of messages
    on a queue; the agent's loop waits on it (`wait`) and then reads the state
    it needs afresh (level-triggered, so a lost or coalesced event costs nothing).
    """

    GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
              | RTMGRP_IPV6_ROUTE)

    def __init__(self) -> None:
        self._events: queue.Queue[BaseException | None] = queue.Queue()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netlink-watch", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        try:
            with IPRoute() as ipr:
                ipr.bind(groups=self.GROUPS)
                ipr.asyncore.add_membership(RTNLGRP_NEXTHOP)
                self._ready.set()
                while True:
                    if ipr.get():
                        self._events.put(None)
        except BaseException as e:  # reported to the main loop, which exits
            self._ready.set()
            self._events.put(e)

    def wait(self, timeout: float | None, settle: float = 0.05) -> bool:
        """Block until the kernel reports a change or `timeout` passes; True on a change.

        After a change, messages that follow within `settle` seconds are taken
        with it, so a burst of updates (SPF replacing many routes) is one wake-up.
        """
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            return False
        while True:
            if item is not None:
                raise RuntimeError(f"netlink watch failed: {item!r}") from item
            try:
                item = self._events.get(timeout=settle)
            except queue.Empty:
                return True
