"""The live mesh for `kubermesh mesh report` (and `lab report`): what this node's
ospf6d knows, as the graph mesh.resilience judges."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from firstboot.ospf import read_view
from firstboot.vty import Vty
from mesh import plan, resilience


def live_mesh(frr_run: Path, router_id: str, loopback: IPv6Address) -> resilience.Mesh:
    """This node's view: itself, the routers its SPF tree reaches, the cables both
    ends list; each named by the loopback it announces. VtyError if ospf6d is down."""
    view = read_view(Vty(frr_run), router_id)
    ula = IPv6Network((int(loopback) >> 80 << 80, 48))
    names = {router_id: plan.hostname_of(loopback)}
    for addr, routers in view.advertisers.items():
        if plan.is_loopback(ula, addr) and len(routers) == 1:
            names.setdefault(next(iter(routers)), plan.hostname_of(addr))
    return resilience.mesh_of(router_id, view.reachable, view.links, names)
