"""systemd-networkd files for the NICs the site marks not mesh.

Every other ethernet NIC is a mesh link from the first instant, by the image's
own default (units/network/80-kubermesh-mesh.network: IPv6 link-local only, no
DHCP, no RAs), so a rogue DHCP server on a mesh cable configures nothing, not
even at boot. A not-mesh NIC (e.g. a management port) is an ordinary host's:
DHCP and RAs. The runtime writes these files to /run/systemd/network; their
number sorts before the mesh default, so they win.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mesh import ifname, render

PREFIX = "40-kubermesh-"

_env = render.environment("mesh")


def render_networkd(not_mesh: Iterable[str]) -> dict[str, str]:
    """File name -> content, one file per not-mesh NIC, matched by its name.
    ValueError names a bad interface name."""
    template = _env.get_template("not-mesh.network.j2")
    return {not_mesh_file(name): template.render(name=name)
            for name in ifname.checked(not_mesh, "not-mesh interface name")}


def not_mesh_file(name: str) -> str:
    return f"{PREFIX}not-mesh-{name}.network"


@dataclass(frozen=True)
class LinkState:
    """What networkd says of one link (/run/systemd/netif/links/IFINDEX)."""

    admin_state: str = ""  # pending, initialized, configuring, configured, failed, ...
    network_file: str = ""  # the .network file it configures the link from


# Admin states in which networkd has chosen a .network file (or none) for a link.
SETTLED = frozenset({"configuring", "configured", "failed", "unmanaged", "linger"})


def parse_link_state(text: str) -> LinkState:
    """networkd's state file of a link (KEY=VALUE lines, sd-network's format)."""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return LinkState(values.get("ADMIN_STATE", ""), values.get("NETWORK_FILE", ""))
