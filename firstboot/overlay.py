"""IPv4 pods over the IPv6 mesh, with no tunnels.

    routes   the kernel's IPv6 /128 routes inside the site's /48, with their next
             hops: read in full at start, after link changes and every RESYNC;
             in between followed message by message (a pass costs what changed,
             not a dump of every route: one SPF run can move hundreds)
    overlay  1. pod-block claims from those routes (mesh.pods: a /128 in
                <ula>:2::/64 embedding an IPv4 block and its owner's router-id),
                each counted only when the router that advertises it in the
                link-state database is the owner it embeds;
             2. this node's block (kept unless a lower router-id claims it too;
                else the first free candidate of its id), announced: the claim
                /128 and the node's IPv4 /32 on lo, which ospf6d announces;
             3. for every other block an IPv4 route with the IPv6 next hops of its
                keeper's claim (`via inet6 fe80::… dev IF`, ECMP kept);
             4. the CNI configuration (bridge + host-local) for the block.
Each route and address is applied on its own: one that fails is reported and
retried, and does not hold up the others.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Any, Protocol, TypeVar

from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

from firstboot.files import write_atomic
from firstboot.node import NodeConfig
from firstboot.ospf import Ospf
from firstboot.runtime import Controller
from mesh import cni, pods
from mesh.pods import BlockClaim

log = logging.getLogger("kubermesh.overlay")

# The routing protocol number marking the IPv4 routes the overlay owns (unassigned in
# /etc/iproute2/rt_protos and FRR's list), so it never touches anyone else's routes.
RTPROT_KUBERMESH = 77
RTPROT_SERVICES = 78  # the service range's one route, on lo (ClusterIPs from the node)
# Above the kernel's connected routes (metric 0): the CNI bridge's own block wins.
ROUTE_METRIC = 20
RESYNC = 30.0  # seconds between full reads of the kernel's routes, as a safety net
# A node with no block chooses once it has had routes for this long: SPF installs
# the routes of a freshly synchronised LSDB within a moment of each other.
ATTACHED_FOR = 1.0
SETTLE = 10.0  # a fresh node waits this long at most to learn others' claims
RTN_UNICAST = 1


@dataclass(frozen=True, order=True)
class NextHop:
    gateway: IPv6Address  # a neighbour's link-local address
    oif: int


Hops = tuple[NextHop, ...]


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name) if hasattr(msg, "get_attr") else dict(msg["attrs"]).get(name)


def route_hops(route: Any) -> Hops:
    """Next hops of a route message: RTA_GATEWAY (IPv6) or RTA_VIA (IPv4 via inet6),
    single or in RTA_MULTIPATH."""
    hops = []
    multipath = _attr(route, "RTA_MULTIPATH")
    for h in multipath if multipath else [route]:
        oif = h.get("oif") or _attr(h, "RTA_OIF")
        gw = _attr(h, "RTA_GATEWAY")
        via = _attr(h, "RTA_VIA")
        if gw is None and via is not None and via["family"] == socket.AF_INET6:
            gw = via["addr"]
        if gw is not None and oif:
            hops.append(NextHop(IPv6Address(gw), int(oif)))
    return tuple(sorted(hops))


class Claim(Protocol):
    """A /128 that embeds the router-id of who announces it (pod block, slot)."""

    @property
    def owner(self) -> IPv4Address: ...


C = TypeVar("C", bound=Claim)


def valid_claims(claims: Mapping[IPv6Address, C],
                 advertisers: Mapping[IPv6Address, frozenset[str]]
                 ) -> tuple[dict[IPv6Address, C], dict[IPv6Address, C]]:
    """(counted, forged): a claim counts only when its owner advertises it. Another
    router announcing a claim that embeds someone else's (lower) router-id evicts
    nothing."""
    counted: dict[IPv6Address, C] = {}
    forged: dict[IPv6Address, C] = {}
    for addr, c in claims.items():
        by = advertisers.get(addr)
        if by is None:
            continue  # not in the view yet: the next reading tells
        (counted if str(c.owner) in by else forged)[addr] = c
    return counted, forged


def desired_routes(claims: Mapping[IPv6Address, BlockClaim], hops: Mapping[IPv6Address, Hops],
                   mine: IPv4Network | None) -> dict[IPv4Network, Hops]:
    return {block: hops[addr] for block, addr in pods.routes_by_block(claims, mine).items()
            if hops.get(addr)}


class Routes(Controller):
    """The kernel's IPv6 /128 routes inside the site: dst -> next hops."""

    name = "routes"
    period = RESYNC
    groups = RTMGRP_LINK | RTMGRP_IPV6_ROUTE

    def __init__(self, cfg: NodeConfig, ipr: Any) -> None:
        self.ula = cfg.site.mesh.ula
        self.ipr = ipr
        self.table: dict[IPv6Address, Hops] = {}
        self.full = True
        self.version = 0  # bumped on every change

    def wants(self, msg: Any) -> bool:
        event = msg.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            return True
        if event not in ("RTM_NEWROUTE", "RTM_DELROUTE") or msg["family"] != socket.AF_INET6:
            return False
        dst = _attr(msg, "RTA_DST")
        return bool(dst is not None and msg["dst_len"] == 128 and IPv6Address(dst) in self.ula)

    def overflow(self) -> None:
        self.full = True

    def message(self, msg: Any) -> None:
        event = msg.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            # The kernel drops a downed link's routes without a word: read all again.
            self.full = True
            return
        self._learn(msg, event)

    def _learn(self, r: Any, event: str) -> None:
        if r["dst_len"] != 128 or _attr(r, "RTA_DST") is None:
            return
        dst = IPv6Address(_attr(r, "RTA_DST"))
        if dst not in self.ula:
            return
        if event == "RTM_NEWROUTE" and r["type"] == RTN_UNICAST and r["proto"] != 2 \
                and (_attr(r, "RTA_TABLE") or r.get("table", 254)) == 254:
            hops = route_hops(r)
            if self.table.get(dst) != hops:
                self.table[dst] = hops
                self.version += 1
        elif event == "RTM_DELROUTE" and dst in self.table:
            del self.table[dst]
            self.version += 1

    def reconcile(self) -> bool:
        if self.full or self.due_resync():
            old, version = self.table, self.version
            self.table = {}
            for r in self.ipr.get_routes(family=socket.AF_INET6, table=254):
                self._learn(r, "RTM_NEWROUTE")
            self.full = False
            self.last_full = time.monotonic()
            self.version = version + (self.table != old)
        changed = self.version != self.reported
        self.reported = self.version
        return changed

    last_full = 0.0
    reported = 0  # the version last passed on to the controllers after this one

    def due_resync(self) -> bool:
        return time.monotonic() - self.last_full >= RESYNC - 0.1


class Overlay(Controller):
    name = "overlay"
    after = ("routes", "ospf")
    groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
    period = RESYNC

    def __init__(self, cfg: NodeConfig, ipr: Any, routes: Routes, ospf: Ospf,
                 poke: Callable[[str], None]) -> None:
        self.cfg, self.ipr, self.routes, self.ospf, self.poke = cfg, ipr, routes, ospf, poke
        self.ula = cfg.site.mesh.ula
        self.pod_subnet = pods.pod_block_subnet(self.ula)
        self.router_id = cfg.node.router_id
        self.block: IPv4Network | None = self._remembered()
        self.started = time.monotonic()
        self.attached_since: float | None = None
        self.failures: list[str] = []
        self.installed: dict[IPv4Network, Hops] | None = None  # None: read it again
        self.addresses_ok = False
        self.claims: dict[IPv6Address, BlockClaim] = {}  # others' counted claims
        self.forged: dict[IPv6Address, BlockClaim] = {}
        self.unverified = 0  # claims the OSPF view does not list yet
        self.routed: set[IPv4Network] = set()

    def wants(self, msg: Any) -> bool:
        # Addresses removed from lo (ours, by hand) and link changes; not our own adds.
        return msg.get("event") in ("RTM_DELADDR", "RTM_NEWLINK", "RTM_DELLINK")

    def message(self, msg: Any) -> None:
        self.addresses_ok = False
        if msg.get("event") != "RTM_DELADDR":
            self.installed = None  # routes over a downed link went with it

    def overflow(self) -> None:
        self.addresses_ok = False
        self.installed = None

    def next_run(self) -> float | None:
        # Without a block yet, look again soon: it chooses once the mesh has settled.
        return 0.5 if self.block is None else self.period

    def _remembered(self) -> IPv4Network | None:
        path = self.cfg.paths.overlay_state
        try:
            block = IPv4Network(json.loads(path.read_text())["block"])
            pods.block_index(self.cfg.site.pods, block)  # still a block of this site
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring %s: %s", path, e)
            return None
        log.info("remembered pod block %s", block)
        return block

    # --- one pass

    def reconcile(self) -> bool:
        self.failures = []
        before = (self.block, frozenset(self.routed), len(self.claims), len(self.forged))
        own = {a for a in self.routes.table if a in self.pod_subnet}
        claims = {a: c for a in own
                  if (c := pods.parse_claim(self.ula, self.cfg.site.pods, a)) is not None
                  and c.owner != self.router_id}
        counted, forged = valid_claims(claims, self.ospf.view.advertisers)
        self.unverified = len(claims) - len(counted) - len(forged)
        if self.unverified:
            self.poke("ospf")  # the LSDB holds them already: read it again now
        for addr in forged.keys() - self.forged.keys():
            log.warning("ignoring claim %s on %s: it embeds router-id %s but is advertised "
                        "by %s", addr, forged[addr].block, forged[addr].owner,
                        ", ".join(sorted(self.ospf.view.advertisers.get(addr, ()))),
                        extra={"fields": {"forged_claim": str(addr)}})
        self.claims, self.forged = counted, forged
        now = time.monotonic()
        if self.routes.table and self.attached_since is None:
            self.attached_since = now
        if self.block is None and now - self.started < SETTLE and (
                self.attached_since is None or now - self.attached_since < ATTACHED_FOR):
            return False  # others' claims are not all known yet: choose a moment later
        # A node without a block avoids every claim it sees, checked or not yet: a
        # newcomer never evicts a holder. Keeping a block counts checked claims only.
        changed_block = self._choose(list((claims if self.block is None else counted).values()))
        # Routes first: after a failure elsewhere in the mesh, they are what traffic waits for.
        self._apply_routes(desired_routes(counted, self.routes.table, self.block))
        if changed_block or not self.addresses_ok:
            self._apply_addresses()
        if self.failures:
            self.installed = None
            raise RuntimeError(f"{len(self.failures)} failed: {'; '.join(self.failures[:3])}")
        after = (self.block, frozenset(self.routed), len(self.claims), len(self.forged))
        return after != before

    def _choose(self, others: list[BlockClaim]) -> bool:
        block = pods.choose_block(self.cfg.node.node_id, self.router_id, self.cfg.site.pods,
                                  others, self.block)
        if block == self.block:
            return False
        if self.block is not None:
            rival = pods.owners(c for c in others if c.block == self.block)[self.block]
            log.warning("yielding pod block %s to router-id %s (lower than ours, %s); "
                        "taking %s", self.block, rival, self.router_id, block)
        else:
            log.info("claiming pod block %s", block)
        self.block = block
        paths = self.cfg.paths
        write_atomic(paths.overlay_state, json.dumps({"block": str(block)}) + "\n", 0o644)
        write_atomic(paths.cni_conf_dir / cni.CNI_FILE,
                     cni.render_cni(block, paths.cni_data_dir), 0o644)
        return True

    def _lo_addresses(self) -> set[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        lo = self.ipr.link_lookup(ifname="lo")[0]
        return {ipaddress.ip_interface(f"{_attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}")
                for a in self.ipr.get_addr(index=lo)}

    def _apply_addresses(self) -> None:
        if self.block is None:
            return
        claim = pods.claim_address(self.ula, BlockClaim(self.block, self.router_id))
        want: set[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = {
            ipaddress.IPv6Interface(f"{claim}/128"),
            ipaddress.IPv4Interface(f"{pods.node_address(self.block)}/32"),
        }
        have = self._lo_addresses()
        lo = self.ipr.link_lookup(ifname="lo")[0]
        ours = {a for a in have
                if a.ip in self.pod_subnet  # claims
                or (a.ip in self.cfg.site.pods.range and a.network.prefixlen == 32)}
        for a in sorted(want - have, key=str):
            self._netlink(f"add {a} on lo", self.ipr.addr, "add", index=lo, address=str(a.ip),
                          prefixlen=a.network.prefixlen)
        for a in sorted(ours - want, key=str):  # a block given up, or a stale one
            self._netlink(f"remove {a} from lo", self.ipr.addr, "del", index=lo,
                          address=str(a.ip), prefixlen=a.network.prefixlen)
        # The service range, so that the node itself reaches ClusterIPs: a mesh node has
        # no default IPv4 route, and without a route a connection fails before
        # kube-proxy's DNAT (nat OUTPUT) gives it its endpoint's address. From the node's
        # IPv4 address: lo's 127.0.0.1 would be dropped as a martian on the mesh.
        self._netlink(f"route {self.cfg.site.services.range} dev lo", self.ipr.route,
                      "replace", dst=str(self.cfg.site.services.range), oif=lo,
                      prefsrc=str(pods.node_address(self.block)), proto=RTPROT_SERVICES,
                      table=254)
        self.addresses_ok = not self.failures

    def _installed_routes(self) -> dict[IPv4Network, Hops]:
        out = {}
        for r in self.ipr.get_routes(family=socket.AF_INET, table=254, proto=RTPROT_KUBERMESH):
            if r["proto"] == RTPROT_KUBERMESH:
                out[IPv4Network((_attr(r, "RTA_DST"), r["dst_len"]))] = route_hops(r)
        return out

    def _apply_routes(self, want: dict[IPv4Network, Hops]) -> None:
        if self.installed is None or self.routes.due_resync():
            self.installed = self._installed_routes()
        have = self.installed
        for block, hops in sorted(want.items()):
            if have.get(block) == hops:
                continue
            multipath = [{"oif": h.oif, "via": {"family": socket.AF_INET6,
                                                "addr": str(h.gateway)}} for h in hops]
            if self._netlink(f"route {block} via "
                             f"{', '.join(f'{h.gateway}%{h.oif}' for h in hops)}",
                             self.ipr.route, "replace", dst=str(block), multipath=multipath,
                             proto=RTPROT_KUBERMESH, priority=ROUTE_METRIC, table=254):
                have[block] = hops
            else:
                have.pop(block, None)  # unknown now: the retry's full read will tell
        for block in sorted(set(have) - set(want)):
            if self._netlink(f"remove route {block}", self.ipr.route, "del", dst=str(block),
                             proto=RTPROT_KUBERMESH, priority=ROUTE_METRIC, table=254):
                del have[block]
        self.routed = set(have)

    def _netlink(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except Exception as e:
            self.failures.append(f"{what}: {e}")
            return False
