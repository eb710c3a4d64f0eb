"""FRR configuration (zebra + ospf6d + bfdd) rendered from site, node and links."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mesh import render
from mesh.ifname import checked
from mesh.plan import NodeIdentity, provisioning_range
from mesh.site import Site

FRR_DAEMONS = ("zebra", "ospf6d", "bfdd")
FRR_BIN = Path("/usr/lib/frr")
# Applies a changed frr.conf to running daemons (Debian package frr-pythontools).
FRR_RELOAD = FRR_BIN / "frr-reload.py"
# watchfrr restarts a daemon that crashed or hangs. It is given time to see daemons
# come up on slow nodes (old PCs, emulated VMs): with its restart timeout of 20 s a
# slow first boot killed and restarted zebra and failed frr.service. A hung daemon
# is still caught. The image's frr.service and every lab node run it with these.
WATCHFRR_OPTIONS = ("--timeout", "180", "--restart-timeout", "120")

# A link's OSPF cost from its speed: 10 Gb/s costs 10, 1 Gb/s 100, 100 Mb/s 1000, so
# traffic prefers fast cables over a slow short cut. (FRR's own `auto-cost
# reference-bandwidth` does the same, but frr-reload 8.4 cannot apply it.)
REFERENCE_MBPS = 100_000
MAX_COST = 65535
UNKNOWN_SPEED_COST = 100  # a NIC that reports no speed counts as 1 Gb/s, a PC's usual

_env = render.environment("mesh")


def link_cost(speed_mbps: int | None) -> int:
    """The cost of a link of that speed (Mb/s, as sysfs says; unknown is None or -1)."""
    if not speed_mbps or speed_mbps <= 0:
        return UNKNOWN_SPEED_COST
    return max(1, min(MAX_COST, REFERENCE_MBPS // speed_mbps))


def render_frr_conf(site: Site, node: NodeIdentity, links: Sequence[str],
                    log: str = "log syslog informational",
                    costs: Mapping[str, int] | None = None) -> str:
    """The integrated frr.conf: area 0, every link point-to-point, `lo` passive;
    each link's cost from `costs` (link_cost), else that of an unknown speed."""
    names = checked(links, "mesh interface name")
    return _env.get_template("frr.conf.j2").render(
        node=node, links=names, mesh=site.mesh, secrets=site.secrets, log=log,
        provisioning=provisioning_range(site.mesh.ula),
        costs={link: (costs or {}).get(link, UNKNOWN_SPEED_COST) for link in links},
    )

