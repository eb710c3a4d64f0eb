"""The status light: a blink(1) plugged into the node shows its stage (mesh.light
says which colour and why), blinks on a conflict, and its own watchdog turns it
red when this runtime stops tickling it.

The device is reached through hidapi's hidraw backend (the kernel's HID driver
keeps the device; the library's libusb backend would take it from the kernel and
cannot see a virtual HID device). A light that is absent, unplugged or failing
changes nothing else: the controller looks for one every few seconds and reports
what it shows, never an error of the runtime.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from firstboot.runtime import Controller
from mesh import light

log = logging.getLogger("kubermesh.light")

LOOK_EVERY = 5.0  # seconds between looks for a light while there is none


def _open_first() -> tuple[Any, str] | None:
    """The first blink(1) the kernel offers, opened; None when there is none."""
    import hidraw  # hidapi's hidraw backend (PyPI hidapi, requirements.lock)

    for info in hidraw.enumerate(light.VENDOR_ID, light.PRODUCT_ID):
        dev = hidraw.device()
        try:
            dev.open_path(info["path"])
        except OSError as e:
            log.warning("status light at %s: cannot open it: %s",
                        info["path"].decode(errors="replace"), e)
            continue
        return dev, info.get("serial_number") or info["path"].decode(errors="replace")
    return None


class Light(Controller):
    name = "light"
    period = light.BLINK_SECONDS
    after = ("status",)  # a new stage shows at once

    def __init__(self, stage: Callable[[], tuple[str, int]],
                 opener: Callable[[], tuple[Any, str] | None] = _open_first,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`stage`: the node's stage and its number of conflicts, now."""
        self.stage, self.opener, self.clock = stage, opener, clock
        self.dev: Any = None
        self.serial = ""
        self.state = "none plugged in"
        self.looked = -LOOK_EVERY
        self.tickled: float | None = None  # when the light was last told all is well
        self.written: bytes = b""  # the last colour command sent
        self.showing: light.Shown | None = None

    def next_run(self) -> float | None:
        if self.dev is None:
            return LOOK_EVERY
        return light.BLINK_SECONDS if self.showing and self.showing.blinking \
            else light.TICKLE_SECONDS

    def reconcile(self) -> bool:
        before = self.state
        now = self.clock()
        if self.dev is None:
            if now - self.looked < LOOK_EVERY:
                return False
            self.looked = now
            try:
                found = self.opener()
            except (ImportError, OSError) as e:
                self.state = f"cannot look for one: {e}"
                return self.state != before
            if found is None:
                self.state = "none plugged in"
                return self.state != before
            self.dev, self.serial = found
            self.written, self.tickled = b"", None
            try:
                self._arm()
            except OSError as e:
                self._lost(e)
                return self.state != before
            log.info("status light: blink(1) %s found", self.serial)
        try:
            self._show(now)
        except OSError as e:
            self._lost(e)
        return self.state != before

    def _send(self, report: bytes) -> None:
        n = self.dev.send_feature_report(report)
        if n < 0 or (n and n != len(report)):
            raise OSError(f"the light took {n} of {len(report)} bytes")

    def _arm(self) -> None:
        """The watchdog's red pattern, then the watchdog itself."""
        for line in light.watchdog_pattern():
            self._send(line)
        self._send(light.tickle(True))

    def _show(self, now: float) -> None:
        stage, conflicts = self.stage()
        self.showing = s = light.shown(stage, conflicts)
        phase = int(now / light.BLINK_SECONDS)
        if self.tickled is not None and now - self.tickled >= light.WATCHDOG_SECONDS:
            # This runtime was stopped (or starved) that long: the light's watchdog
            # has fired and plays red. Stop it; the colour is sent again below.
            log.warning("status light: not tickled for %.0f s, its watchdog turned it red",
                        now - self.tickled)
            self._send(light.STOP_PLAYING)
            self.written = b""
        cmd = light.fade(s.at(phase), 0 if s.blinking else light.FADE_MS)
        if cmd != self.written:
            self._send(cmd)
            self.written = cmd
        if self.tickled is None or now - self.tickled >= light.TICKLE_SECONDS:
            self._send(light.tickle(True))
            self.tickled = now
        self.state = f"blink(1) {self.serial}: {s.name}" + (
            " blinking" if s.blinking else "") + f" ({s.why})"

    def _lost(self, e: OSError) -> None:
        log.warning("status light: blink(1) %s gone (%s); looking for one every %.0f s",
                    self.serial, e, LOOK_EVERY)
        self._close()
        self.state = f"blink(1) {self.serial} unplugged"

    def _close(self) -> None:
        if self.dev is not None:
            with contextlib.suppress(OSError):
                self.dev.close()
        self.dev, self.showing = None, None

    def close(self) -> None:
        """The runtime stops: the watchdog stays armed, so that a node going down,
        or a runtime that stopped on its own, turns the light red."""
        self._close()

    def report(self) -> str:
        return self.state
