"""The status light: colours through the stages, the blink(1) commands, and the
controller's cadence (tickles, blinking, a light unplugged and plugged back).

The device itself is tested in a VM (tests/vm/test_mesh.py::test_status_light):
this host's kernel offers no uhid for a virtual one. Here a recorder stands in for
the USB device, the one part that cannot exist on this machine."""

from __future__ import annotations

from typing import Any

import pytest

from firstboot.light import LOOK_EVERY, Light
from firstboot.status import Stage
from mesh import light


def test_every_stage_has_its_own_colour_in_order() -> None:
    names = [light.shown(str(s), 0).name for s in Stage]
    assert names == ["white", "orange", "yellow", "cyan", "blue", "magenta", "green"]
    assert len({light.shown(str(s), 0).colour for s in Stage}) == len(Stage)
    assert light.RED not in {light.shown(str(s), 0).colour for s in Stage}  # red: dead only
    assert light.shown("no such stage", 0).name == "white"


def test_a_conflict_blinks_the_stage_colour() -> None:
    s = light.shown("overlay", 2)
    assert s.blinking and s.why == "overlay, 2 conflicts"
    assert [s.at(p) for p in range(4)] == [(0, 0, 255), light.OFF] * 2
    assert light.shown("overlay", 0).at(1) == (0, 0, 255)


def test_the_device_commands() -> None:
    # blink1-lib's byte layout: report id 1, command letter, arguments, 9 bytes in all.
    assert light.fade((1, 2, 3), 300) == bytes([1, ord("c"), 1, 2, 3, 0, 30, 0, 0])
    assert light.pattern_line(1, light.RED, 500) == bytes([1, ord("P"), 255, 0, 0, 0, 50, 1, 0])
    # The watchdog: on, 10 s (1000 ticks of 10 ms), colour not kept, play lines 0-1.
    assert light.tickle(True) == bytes([1, ord("D"), 1, 0x03, 0xE8, 0, 0, 1, 0])
    assert light.decode(light.tickle(True)) == "watchdog on: 10000 ms, then lines 0-1"
    assert [light.decode(x) for x in light.watchdog_pattern()] == [
        "pattern line 0: red in 500 ms", "pattern line 1: red in 500 ms"]
    assert light.decode(light.fade((0, 200, 0))) == "fade to green in 300 ms"
    assert light.version(bytes([1, ord("v"), 0, ord("2"), ord("4"), 0, 0, 0, 0])) == "24"
    with pytest.raises(ValueError, match="bad arguments"):
        light.pattern_line(300, light.RED, 0)


class Recorder:
    """A blink(1) as the controller sees it: feature reports in, or gone."""

    def __init__(self) -> None:
        self.reports: list[bytes] = []
        self.gone = False
        self.closed = False

    def send_feature_report(self, report: bytes) -> int:
        if self.gone:
            return -1
        self.reports.append(bytes(report))
        return len(report)

    def close(self) -> None:
        self.closed = True

    def said(self) -> list[str]:
        out, self.reports = [light.decode(r) for r in self.reports], []
        return out


class Node:
    def __init__(self) -> None:
        self.now = 0.0
        self.stage, self.conflicts = "links", 0
        self.plugged: Recorder | None = Recorder()
        self.looks = 0

    def open(self) -> tuple[Any, str] | None:
        self.looks += 1
        return (self.plugged, "TEST0001") if self.plugged else None


def _lamp(node: Node) -> Light:
    return Light(lambda: (node.stage, node.conflicts), node.open, lambda: node.now)


def _lit() -> tuple[Node, Light, Recorder]:
    """A light plugged in and set up (what it was told then, forgotten)."""
    node = Node()
    lamp = _lamp(node)
    dev = node.plugged
    assert dev is not None
    lamp.reconcile()
    dev.said()
    return node, lamp, dev


def test_the_light_follows_the_stage_and_is_tickled() -> None:
    node = Node()
    lamp = _lamp(node)
    dev = node.plugged
    assert dev is not None
    assert lamp.reconcile()
    # Armed first: the red pattern, the watchdog; then the stage's colour and a tickle.
    assert dev.said() == ["pattern line 0: red in 500 ms", "pattern line 1: red in 500 ms",
                          "watchdog on: 10000 ms, then lines 0-1",
                          "fade to orange in 300 ms", "watchdog on: 10000 ms, then lines 0-1"]
    assert lamp.report() == "blink(1) TEST0001: orange (links)"
    assert lamp.next_run() == light.TICKLE_SECONDS
    node.now += 1.0
    assert not lamp.reconcile()
    assert dev.said() == []  # nothing changed, the tickle is not due
    for stage, colour in (("adjacencies", "yellow"), ("routes", "cyan"), ("overlay", "blue"),
                          ("anycast", "magenta"), ("kubelet", "green")):
        node.stage = stage
        node.now += light.TICKLE_SECONDS
        assert lamp.reconcile()
        assert dev.said() == [f"fade to {colour} in 300 ms",
                              "watchdog on: 10000 ms, then lines 0-1"]


def test_after_the_watchdog_fired_the_colour_comes_back() -> None:
    node, lamp, dev = _lit()
    node.now += light.WATCHDOG_SECONDS + 5  # the runtime was stopped: the light is red
    lamp.reconcile()
    assert dev.said() == ["play off", "fade to orange in 300 ms",
                          "watchdog on: 10000 ms, then lines 0-1"]


def test_a_conflict_blinks_every_half_second() -> None:
    node, lamp, dev = _lit()
    node.conflicts = 1
    seen = []
    for _ in range(4):
        node.now += light.BLINK_SECONDS
        lamp.reconcile()
        seen += [x for x in dev.said() if x.startswith("fade")]
        assert lamp.next_run() == light.BLINK_SECONDS
    assert seen == ["fade to off in 0 ms", "fade to orange in 0 ms"] * 2  # from 0.5 s: off
    assert lamp.report() == "blink(1) TEST0001: orange blinking (links, 1 conflict)"


def test_no_light_unplugged_and_back() -> None:
    node = Node()
    node.plugged = None
    lamp = _lamp(node)
    assert not lamp.reconcile() and lamp.report() == "none plugged in"
    assert lamp.next_run() == LOOK_EVERY
    node.now += 1.0
    lamp.reconcile()
    assert node.looks == 1  # not looked for again before LOOK_EVERY
    node.plugged = Recorder()
    node.now += LOOK_EVERY
    assert lamp.reconcile() and lamp.report().startswith("blink(1) TEST0001: orange")
    node.plugged.gone = True  # pulled out
    node.stage = "routes"
    node.now += light.TICKLE_SECONDS
    assert lamp.reconcile()
    assert lamp.report() == "blink(1) TEST0001 unplugged" and node.plugged.closed
    assert lamp.next_run() == LOOK_EVERY
    node.plugged = Recorder()  # plugged back: armed again, the stage now
    node.now += LOOK_EVERY
    assert lamp.reconcile()
    assert node.plugged.said()[:4] == ["pattern line 0: red in 500 ms",
                                       "pattern line 1: red in 500 ms",
                                       "watchdog on: 10000 ms, then lines 0-1",
                                       "fade to cyan in 300 ms"]


def test_no_hid_library_is_said_not_raised() -> None:
    def broken() -> tuple[Any, str] | None:
        raise ImportError("No module named 'hidraw'")

    lamp = Light(lambda: ("links", 0), broken, lambda: 100.0)
    assert lamp.reconcile()
    assert lamp.report() == "cannot look for one: No module named 'hidraw'"
