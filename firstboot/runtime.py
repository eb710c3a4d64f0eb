"""What the long-running node agents share: logging, stopping on signals, and a
netlink watcher that wakes an agent's loop when the kernel reports a change."""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

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
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s {name}: %(message)s")
    # --debug is about the agent, not pyroute2's message-level chatter.
    logging.getLogger("kubermesh").setLevel(logging.DEBUG if debug else logging.INFO)
    return logging.getLogger(f"kubermesh.{name}")


class Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT; a BaseException, so the loops'
    `except Exception` (report and retry) never swallows it."""


def stop_on_signals() -> None:
    def handler(signum: int, _: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
          | RTMGRP_IPV6_ROUTE)


class NetlinkWatch:
    """Routes, addresses and links changing in this network namespace.

    A thread reads the multicast groups and queues the messages an agent finds
    relevant; the agent's loop takes them in batches (`wait`).
    """

    def __init__(self, relevant: Callable[[Any], bool] = lambda _: True,
                 groups: int = GROUPS) -> None:
        """`relevant(message)` says which messages wake the loop: an agent ignores
        the echoes of its own changes, which would only cost it another pass.
        `groups` are the rtnetlink multicast groups read (every message is parsed,
        so fewer groups is less work when SPF rewrites many routes at once)."""
        self._relevant = relevant
        self._groups = groups
        self._events: queue.Queue[Any] = queue.Queue()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netlink-watch", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        try:
            with IPRoute() as ipr:
                ipr.bind(groups=self._groups)
                ipr.asyncore.add_membership(RTNLGRP_NEXTHOP)
                self._ready.set()
                while True:
                    for m in ipr.get():
                        if self._relevant(m):
                            self._events.put(m)
        except BaseException as e:  # reported to the main loop, which exits
            self._ready.set()
            self._events.put(e)

    def wait(self, timeout: float | None, settle: float = 0.02) -> list[Any]:
        """The next batch of messages, in order; empty if `timeout` passed first.

        After a message, those that follow within `settle` seconds are taken
        with it, so a burst of updates (SPF replacing many routes) is one batch.
        """
        try:
            batch = [self._events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            if isinstance(batch[-1], BaseException):
                raise RuntimeError(f"netlink watch failed: {batch[-1]!r}") from batch[-1]
            try:
                batch.append(self._events.get(timeout=settle))
            except queue.Empty:
                return batch
