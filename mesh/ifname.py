"""Linux interface names as every renderer accepts them: at most 15 characters (the
kernel's limit) from a set that needs no quoting in FRR, networkd or nftables files."""

from __future__ import annotations

import re
from collections.abc import Iterable

IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")


def checked(names: Iterable[str], what: str) -> tuple[str, ...]:
    """The names, sorted and without repeats; ValueError naming the first bad one.
    `lo` is refused too: no renderer here configures the loopback as a NIC."""
    out = set()
    for name in names:
        if not isinstance(name, str) or not IFNAME.match(name) or name == "lo":
            raise ValueError(f"not a valid {what}: {name!r}")
        out.add(name)
    return tuple(sorted(out))
