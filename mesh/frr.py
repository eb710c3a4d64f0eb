"""FRR configuration (zebra + ospf6d + bfdd) rendered from site, node and links."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mesh import render
from mesh.plan import NodeIdentity
from mesh.site import Site

FRR_DAEMONS = ("zebra", "ospf6d", "bfdd")
_IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")

_env = render.environment("mesh")


def render_frr_conf(site: Site, node: NodeIdentity, links: Sequence[str],
                    log: str = "log syslog informational") -> str:
    """The integrated frr.conf: area 0, every link point-to-point, `lo` passive."""
    for link in links:
        if not _IFNAME.match(link) or link == "lo":
            raise ValueError(f"not a mesh interface name: {link!r}")
    return _env.get_template("frr.conf.j2").render(
        node=node, links=sorted(set(links)), mesh=site.mesh, secrets=site.secrets, log=log,
    )

