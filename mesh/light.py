"""The status light: what a blink(1) USB light on a node shows, and the device's
commands (pure; firstboot.light talks to the device through hidapi).

Colours, one per stage (docs/status-light.md):

    booting      white    no mesh cable has carrier yet
    links        orange   cabled, no OSPFv3 neighbour yet
    adjacencies  yellow   neighbours, routes to the whole mesh still coming
    routes       cyan     routes to every node, no pod block routed everywhere yet
    overlay      blue     pod network up, the apiserver not reachable
    anycast      magenta  the apiserver reachable, the kubelet not running
    kubelet      green    a working cluster node

A conflict (another node with this node's identity, a forged claim) blinks the
stage's colour on and off. The light's own watchdog ("server tickle", in the
device) turns it red when the node's runtime stops telling it otherwise for
WATCHDOG_SECONDS: a node whose software died is red with nobody's help.

blink(1) protocol (ThingM's blink1-lib, firmware v2+): every command is HID
feature report 1, eight bytes after the report id:

    'c' r g b th tl n     fade to r,g,b in (th<<8|tl)*10 ms (LED n, 0 = all)
    'P' r g b th tl p     pattern line p: fade to r,g,b in (th<<8|tl)*10 ms
    'D' on th tl st sp ep server tickle: unless tickled again in (th<<8|tl)*10 ms,
                          play pattern lines sp..ep; st=1 keeps the colour lit
    'p' on sp ep          play pattern lines sp..ep, or stop playing (on=0)
    'v'                   version: read back as report 1, bytes 3-4 ASCII digits
"""

from __future__ import annotations

from dataclasses import dataclass

VENDOR_ID = 0x27B8  # ThingM
PRODUCT_ID = 0x01ED  # blink(1)
REPORT_ID = 1
REPORT_SIZE = 9  # the report id and eight bytes

Rgb = tuple[int, int, int]

OFF: Rgb = (0, 0, 0)
RED: Rgb = (255, 0, 0)
# By stage name (firstboot.status.Stage), in the order a booting node passes them.
STAGE_COLOURS: dict[str, tuple[str, Rgb]] = {
    "booting": ("white", (96, 96, 96)),
    "links": ("orange", (255, 80, 0)),
    "adjacencies": ("yellow", (200, 160, 0)),
    "routes": ("cyan", (0, 160, 160)),
    "overlay": ("blue", (0, 0, 255)),
    "anycast": ("magenta", (160, 0, 160)),
    "kubelet": ("green", (0, 200, 0)),
}
COLOUR_NAMES: dict[Rgb, str] = {rgb: name for name, rgb in STAGE_COLOURS.values()}
COLOUR_NAMES.update({OFF: "off", RED: "red"})

FADE_MS = 300  # a change of stage fades over this long
BLINK_SECONDS = 0.5  # on, then off, this long each, while there is a conflict
TICKLE_SECONDS = 2.0  # the runtime tells the light it is alive this often
WATCHDOG_SECONDS = 10.0  # and the light turns red when it has not for this long
# The pattern lines the watchdog plays: red, held (two lines, the firmware plays a
# range and loops it).
WATCHDOG_LINES = (0, 1)


@dataclass(frozen=True)
class Shown:
    """What the light shows: a colour, steady or blinking, and why."""

    colour: Rgb
    blinking: bool
    why: str

    @property
    def name(self) -> str:
        return COLOUR_NAMES.get(self.colour, "#{:02x}{:02x}{:02x}".format(*self.colour))

    def at(self, phase: int) -> Rgb:
        """The colour at blink phase `phase` (even: on, odd: off)."""
        return OFF if self.blinking and phase % 2 else self.colour


def shown(stage: str, conflicts: int) -> Shown:
    """What the light shows for a node at `stage` with `conflicts` reported."""
    rgb = STAGE_COLOURS.get(stage, STAGE_COLOURS["booting"])[1]
    why = stage if not conflicts else f"{stage}, {conflicts} conflict" + (
        "s" if conflicts > 1 else "")
    return Shown(rgb, conflicts > 0, why)


def _report(command: str, *args: int) -> bytes:
    if len(args) > 7 or any(not 0 <= a <= 255 for a in args):
        raise ValueError(f"blink(1) command {command!r}: bad arguments {args}")
    return bytes([REPORT_ID, ord(command), *args]).ljust(REPORT_SIZE, b"\0")


def _ticks(ms: float) -> tuple[int, int]:
    """A duration as the device's (high, low) byte pair of 10 ms ticks."""
    t = min(max(int(ms / 10), 0), 0xFFFF)
    return t >> 8, t & 0xFF


def fade(colour: Rgb, ms: float = FADE_MS) -> bytes:
    return _report("c", *colour, *_ticks(ms), 0)


def pattern_line(position: int, colour: Rgb, ms: float) -> bytes:
    return _report("P", *colour, *_ticks(ms), position)


def tickle(enable: bool, timeout_s: float = WATCHDOG_SECONDS, stay_lit: bool = False,
           start: int = WATCHDOG_LINES[0], end: int = WATCHDOG_LINES[-1]) -> bytes:
    return _report("D", int(enable), *_ticks(timeout_s * 1000), int(stay_lit), start, end)


def watchdog_pattern() -> list[bytes]:
    """The pattern lines the watchdog plays: red."""
    return [pattern_line(p, RED, 500) for p in WATCHDOG_LINES]


VERSION = _report("v")
STOP_PLAYING = _report("p", 0)  # the watchdog's pattern, playing since it fired


def version(reply: bytes | list[int]) -> str:
    """The firmware version from the reply to VERSION (e.g. "204"), "" if none."""
    b = bytes(reply)
    digits = b[3:5]
    return digits.decode("ascii") if len(digits) == 2 and digits.isdigit() else ""


def decode(report: bytes | list[int]) -> str:
    """A feature report for people (the device's logs and tests)."""
    b = bytes(report).ljust(REPORT_SIZE, b"\0")
    cmd, a = chr(b[1]), b[2:]
    ms = ((a[3] << 8) | a[4]) * 10
    colour = (a[0], a[1], a[2])
    if cmd == "c":
        return f"fade to {COLOUR_NAMES.get(colour, colour)} in {ms} ms"
    if cmd == "P":
        return f"pattern line {a[5]}: {COLOUR_NAMES.get(colour, colour)} in {ms} ms"
    if cmd == "p":
        return f"play {'on' if a[0] else 'off'}" + (f": lines {a[1]}-{a[2]}" if a[0] else "")
    if cmd == "D":
        t = ((a[1] << 8) | a[2]) * 10
        return (f"watchdog {'on' if a[0] else 'off'}: {t} ms, then lines {a[4]}-{a[5]}"
                + (" (stays lit)" if a[3] else ""))
    return f"command {cmd!r} {list(a)}"
