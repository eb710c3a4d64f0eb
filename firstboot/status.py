"""A node's one status: what it is, its links, and the stage it has reached.

The runtime writes it (`write`) every couple of seconds, with the time it did
and what each controller last reported; `kubermesh status` reads it (`read`,
`render`) and says when it is stale (the runtime stopped writing it).
Stages are ordered: booting → links → adjacencies → routes → overlay → anycast
→ kubelet. Each is reached only when the ones before it hold.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from firstboot.files import write_atomic
from firstboot.paths import NodePaths

STATUS_FILE = NodePaths().status
# The runtime rewrites the status every 2 s; older than this, nobody is writing it.
STALE_AFTER = 15.0


class Stage(IntEnum):
    BOOTING = 0
    LINKS = 1  # at least one mesh link has carrier
    ADJACENCIES = 2  # at least one Full OSPFv3 adjacency
    ROUTES = 3  # a route to every other node in the link-state database
    OVERLAY = 4  # this node holds a pod block and routes every other node's block
    ANYCAST = 5  # the apiserver's anycast address is reachable (routed or local)
    KUBELET = 6  # the kubelet runs

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class LinkStatus:
    name: str
    carrier: bool
    neighbour: str = ""  # router-id of the OSPFv3 neighbour on it
    state: str = ""  # its adjacency state (Full, ExStart, ...)


@dataclass(frozen=True)
class OverlayStatus:
    block: str = ""  # this node's IPv4 pod block, "" while it has none
    node_address: str = ""  # its IPv4 /32 on lo
    blocks_known: int = 0  # other nodes' blocks announced in the mesh
    blocks_routed: int = 0  # of them, how many have an IPv4 route (via inet6)


@dataclass(frozen=True)
class AnycastStatus:
    service: str
    address: str
    state: str  # "local" (served here), "routed" or "unreachable"


@dataclass(frozen=True)
class ControllerReport:
    name: str
    state: str  # pending, ok, error
    error: str = ""
    since: float = 0.0  # wall-clock time of its last change


# What the kubelet stage reports where the image has no kubelet binary.
KUBELET_NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    hostname: str
    identity: str
    loopback: str
    router_id: str
    stage: Stage
    links: tuple[LinkStatus, ...] = ()
    known_nodes: int = 0  # other routers the OSPFv3 SPF tree reaches
    routes_to: int = 0  # of their loopbacks, how many have a kernel route
    known: tuple[str, ...] = ()  # their router-ids
    routed: tuple[str, ...] = ()  # the other nodes' loopbacks this node routes to
    conflicts: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default=())
    # Routers still in the link-state database that the SPF tree does not reach:
    # dead or cut off. Their Router-LSAs stay until they age out (an hour).
    unreachable: tuple[str, ...] = ()
    overlay: OverlayStatus = OverlayStatus()
    anycast: tuple[AnycastStatus, ...] = ()
    kubelet: str = KUBELET_NOT_INSTALLED  # or the kubelet unit's state (active, …)
    updated: float = 0.0  # wall-clock time it was written
    controllers: tuple[ControllerReport, ...] = ()
    # Pod-block claims announced by a router other than the owner they embed.
    forged_claims: tuple[str, ...] = ()
    # Neighbours being provisioned (firstboot.provision.Provision.report): links
    # served, what was served to whom, join requests held.
    provision: dict[str, Any] = field(default_factory=dict)
    join: str = ""  # a node without the site: where its join request stands
    # firstboot.controlplane.Slots.report(): this node's slot, every slot's holder.
    control_plane: dict[str, Any] = field(default_factory=dict)
    # firstboot.clusterdns.ClusterDns.report(): the node's answers to its pods' queries.
    dns: dict[str, Any] = field(default_factory=dict)
    light: str = ""  # firstboot.light.Light.report(): what the status light shows

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stage"] = str(self.stage)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NodeStatus:
        d = dict(d)
        d["stage"] = Stage[d["stage"].upper()]
        d["links"] = tuple(LinkStatus(**x) for x in d["links"])
        for key in ("known", "routed", "conflicts", "unreachable", "forged_claims"):
            d[key] = tuple(d.get(key, ()))
        d["errors"] = tuple(d["errors"])
        d["overlay"] = OverlayStatus(**d.get("overlay", {}))
        d["anycast"] = tuple(AnycastStatus(**x) for x in d.get("anycast", ()))
        d["controllers"] = tuple(ControllerReport(**x) for x in d.get("controllers", ()))
        return cls(**d)

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.updated

    def stale(self, now: float | None = None) -> bool:
        return self.age(now) > STALE_AFTER


def stage_of(links: tuple[LinkStatus, ...], known_nodes: int, routes_to: int,
             overlay: OverlayStatus = OverlayStatus(), apiserver: str = "",
             kubelet: str = KUBELET_NOT_INSTALLED) -> Stage:
    """The furthest stage the facts support (pure). `apiserver` is the state of
    the apiserver's anycast address (AnycastStatus.state)."""
    if not any(link.carrier for link in links):
        return Stage.BOOTING
    if not any(link.state == "Full" for link in links):
        return Stage.LINKS
    if known_nodes == 0 or routes_to < known_nodes:
        return Stage.ADJACENCIES
    if not overlay.block or overlay.blocks_routed < known_nodes:
        return Stage.ROUTES
    if apiserver not in ("local", "routed"):
        return Stage.OVERLAY
    if kubelet != "active":
        return Stage.ANYCAST
    return Stage.KUBELET


def write(status: NodeStatus, path: Path = STATUS_FILE) -> None:
    write_atomic(path, json.dumps(status.to_json(), indent=1), 0o644)


def read(path: Path = STATUS_FILE) -> NodeStatus:
    return NodeStatus.from_json(json.loads(path.read_text()))


def render(s: NodeStatus, now: float | None = None) -> str:
    """For people: identity, links and neighbours, routing, stage, and how fresh."""
    age = s.age(now)
    fresh = (f"STALE: written {age:.0f} s ago; is the runtime running? "
             "(systemctl status kubermesh-agent)" if s.stale(now)
             else f"written {max(age, 0):.0f} s ago")
    lines = [
        f"status    {fresh}",
        f"node      {s.hostname} (id {s.node_id}, from {s.identity})",
        f"loopback  {s.loopback}",
        f"router-id {s.router_id}",
        f"stage     {s.stage}",
        f"routes    to {s.routes_to} of {s.known_nodes} other nodes"
        + (f"; {len(s.unreachable)} more unreachable ({', '.join(s.unreachable)})"
           if s.unreachable else ""),
        "links",
    ]
    for link in s.links:
        carrier = "up" if link.carrier else "no carrier"
        peer = f"neighbour {link.neighbour} {link.state}" if link.neighbour else "no neighbour"
        lines.append(f"  {link.name:<16}{carrier:<12}{peer}")
    if not s.links:
        lines.append("  (no mesh links)")
    o = s.overlay
    if o.block:
        lines.append(f"overlay   block {o.block} (node {o.node_address}); "
                     f"{o.blocks_routed} of {o.blocks_known} other blocks routed")
    else:
        lines.append(f"overlay   no pod block yet; {o.blocks_known} other blocks known")
    for a in s.anycast:
        lines.append(f"anycast   {a.service:<10} {a.address} {a.state}")
    lines.append(f"kubelet   {s.kubelet}")
    if s.dns:
        lines.append(f"dns       {s.dns.get('state', '')}")
    if s.light:
        lines.append(f"light     {s.light}")
    cp = s.control_plane
    if cp:
        mine = f"slot {cp['slot']} of {cp['count']}" if cp.get("slot") is not None else \
            f"no slot (of {cp['count']})"
        held = ", ".join(f"{slot} {'this node' if str(slot) == str(cp.get('slot')) else who}"
                         for slot, who in cp.get("holders", {}).items()) or "none"
        vacated = "".join(f"; slot {slot} vacated, taken over in {left:.0f} s"
                          for slot, left in cp.get("vacated", {}).items())
        lines.append(f"control   {mine}; holders: {held}{vacated}")
        member = cp.get("etcd", {})
        if member:
            lines.append(f"etcd      {member.get('state', '')}" + (
                f"; members: {', '.join(member['members'])}" if member.get("members") else ""))
        kube = cp.get("kubernetes", {})
        if kube:
            lines.append(f"kube-cp   {kube.get('state', '')}")
            for lost in kube.get("marked_unreachable", [])[-3:]:
                lines.append(f"lost      {lost}: marked unreachable (gone from the mesh)")
            admitted = kube.get("admission", {})
            if admitted.get("approved") or admitted.get("denied"):
                lines.append(f"admitted  {len(admitted.get('approved', []))} kubelet-serving "
                             f"certificates approved, {len(admitted.get('denied', []))} denied"
                             + "".join(f"\n          denied {d}"
                                       for d in admitted.get("denied", [])[-3:]))
    if s.join:
        lines.append(f"join      {s.join}")
    prov = s.provision
    for link in prov.get("serving", ()):
        lines.append(f"serving   netboot on {link['link']} ({link['prefix']}): {link['url']}")
    if prov.get("not_serving"):
        lines.append(f"serving   nothing: {prov['not_serving']}")
    for x in prov.get("served", ()):
        what = "all" if x["done"] else "so far"
        lines.append(f"served    {x['path']} to {x['client']}: {x['bytes'] >> 20} MiB ({what}) "
                     f"in {x.get('seconds', 0):.0f} s, from "
                     f"{time.strftime('%H:%M:%S', time.localtime(x['at']))}")
    for r in prov.get("requests", ()):
        lines.append(f"join      {r['id']} ({r['hardware']}) via {r['client']}: {r['state']}"
                     + (", took the site" if r["fetched"] else ""))
    lines += [f"CONFLICT  {c}" for c in s.conflicts]
    lines += [f"forged    pod-block claim {c} (ignored)" for c in s.forged_claims]
    lines += [f"error     {e}" for e in s.errors]
    return "\n".join(lines)
