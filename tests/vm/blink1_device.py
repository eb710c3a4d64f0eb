"""A virtual blink(1) in a guest, through the kernel's uhid (hid-tools): the
node's runtime finds it on the HID bus as it would find the USB light, and
talks to it through hidraw. It keeps what the light would show and writes it,
with every command received, to a JSON file the test reads.

Run in the guest (python3 with pyroute2, and hid-tools and parse on PYTHONPATH):
    blink1_device.py STATE_FILE
SIGTERM unplugs it (the device is destroyed).

The device side of blink1-lib's protocol, as far as the runtime uses it: feature
report 1 of eight bytes; 'c' fade to a colour, 'P' set a pattern line, 'D' the
"server tickle" watchdog (when not tickled in time, it plays pattern lines
sp..ep), 'v' the firmware version.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hidtools.uhid import UHIDDevice

# blink(1) mk2's report descriptor: vendor page 0xFFAB, report 1, 8 bytes, feature.
RDESC = [0x06, 0xAB, 0xFF, 0x09, 0x20, 0xA1, 0x01, 0x15, 0x00, 0x26, 0xFF, 0x00,
         0x75, 0x08, 0x85, 0x01, 0x95, 0x08, 0x09, 0x00, 0xB2, 0x02, 0x01, 0xC0]
BUS_USB = 0x03


class Blink1(UHIDDevice):
    def __init__(self, state_file: Path) -> None:
        super().__init__()
        self.name = "ThingM blink(1) mk2"
        self.info = (BUS_USB, 0x27B8, 0x01ED)
        self.phys = "usb-kubermesh-test/input0"
        self.rdesc = bytes(RDESC)
        self.state_file = state_file
        self.colour = [0, 0, 0]
        self.pattern: dict[int, list[int]] = {}
        self.watchdog: dict[str, Any] = {"armed": False}
        self.fired = 0
        self.playing = False
        self.log: list[dict[str, Any]] = []
        self.reply = [1, 0, 0, 0, 0, 0, 0, 0, 0]

    def set_report(self, req: int, rnum: int, rtype: int, data: list[int]) -> int:
        if rtype != self.UHID_FEATURE_REPORT or not data or data[0] != 1 or len(data) < 9:
            return 32  # EPIPE: a report the device does not have
        cmd, a = chr(data[1]), data[2:9]
        now = time.monotonic()
        if cmd == "c":
            self._show(a[0:3], now, "fade")
        elif cmd == "P":
            self.pattern[a[5]] = a[0:3]
        elif cmd == "D":
            ms = ((a[1] << 8) | a[2]) * 10
            self.watchdog = {"armed": bool(a[0]), "ms": ms, "deadline": now + ms / 1000,
                             "stay_lit": bool(a[3]), "lines": [a[4], a[5]]}
        elif cmd == "p" and not a[0] and self.playing:
            self.playing = False  # stopped: the colour stays until the next 'c'
        elif cmd == "v":
            self.reply = [1, ord("v"), 0, ord("2"), ord("4"), 0, 0, 0, 0]
        self.log.append({"t": round(now, 2), "cmd": cmd, "args": a})
        self.save()
        return 0

    def get_report(self, req: int, rnum: int, rtype: int) -> tuple[int, list[int]]:
        return 0, self.reply

    def _show(self, colour: list[int], now: float, why: str) -> None:
        if colour != self.colour:
            self.colour = list(colour)
            self.log.append({"t": round(now, 2), "shows": self.colour, "why": why})

    def tick(self) -> None:
        """The firmware's watchdog: not tickled in time, it plays its lines."""
        w, now = self.watchdog, time.monotonic()
        if w["armed"] and now >= w["deadline"]:
            first = w["lines"][0]
            self.fired += 1
            self._show(self.pattern.get(first, [0, 0, 0]), now, "watchdog")
            self.playing = True
            w["armed"] = False  # until tickled again
            self.save()

    def save(self) -> None:
        state = {"colour": self.colour, "watchdog": self.watchdog, "fired": self.fired,
                 "playing": self.playing,
                 "pattern": {str(k): v for k, v in sorted(self.pattern.items())},
                 # Every colour shown, and the latest commands (a tickle every
                 # few seconds would push the colours out of a plain tail).
                 "log": [x for i, x in enumerate(self.log)
                         if "shows" in x or i >= len(self.log) - 200],
                 "pid": os.getpid()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)


def main() -> int:
    state_file = Path(sys.argv[1])
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    dev = Blink1(state_file)
    dev.create_kernel_device()
    deadline = time.monotonic() + 30
    while not dev._ready and time.monotonic() < deadline:
        # hid-tools waits for the device's uevent a few times only; on a slow guest
        # the kernel may take longer: the device in sysfs is as good.
        if any(f"HID_UNIQ={dev.uniq}" in u.read_text()
               for u in Path("/sys/bus/hid/devices").glob("*/uevent")):
            dev._ready = True
        time.sleep(0.1)
    if not dev._ready:
        raise SystemExit("the kernel made no HID device of the virtual blink(1) in 30 s")
    dev.save()
    while not stop:
        UHIDDevice.dispatch(100)
        dev.tick()
    dev.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
