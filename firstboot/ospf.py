"""What ospf6d sees, and what it says about this node's identity.

    ospf       neighbours, the Router-LSAs, the routers the SPF tree reaches and
               who advertises each /128 (intra-area-prefix LSAs), asked over
               ospf6d's vty socket every PERIOD; an adjacency stuck on its way
               to Full is reset
    conflicts  two nodes with one router-id: this node's Router-LSA re-originated
               endlessly, or reachable neighbours listing a link to this router-id
               that this node does not have
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from pyroute2.netlink.rtnl import RTMGRP_IPV6_ROUTE

from firstboot.node import Links, NodeConfig
from firstboot.runtime import Controller
from firstboot.vty import Vty, VtyError

log = logging.getLogger("kubermesh.ospf")

PERIOD = 2.0
RTPROT_OSPF = 188  # the protocol number zebra gives OSPF's kernel routes
# The own Router-LSA is re-originated at most every few seconds in a sane mesh;
# a node fighting another with the same router-id re-originates it constantly.
LSA_WAR_WINDOW = 30.0
LSA_WAR_BUMPS = 60
# A link to this router-id that this node lacks, in most rounds of this many
# seconds (at least ten dead intervals, and PHANTOM_ROUNDS rounds), is a conflict.
PHANTOM_WINDOW = 30.0
PHANTOM_ROUNDS = 8
CONFLICT_HOLD = 120.0  # seconds a conflict stays reported after its last evidence
# An adjacency that stays between TwoWay and Full this long (at least ten dead
# intervals) is stuck: ospf6d 8.4 can leave the slave in ExChange for good while
# the master is Full (seen in a 400-node lab under load), and the cable then
# carries nothing. Resetting the interface, as `clear ipv6 ospf6 interface` does,
# starts the exchange again.
STUCK_AFTER = 60.0
EXCHANGING = frozenset({"ExStart", "ExChange", "Loading"})

_SPF_NODE = re.compile(r"\+-(\d{1,3}(?:\.\d{1,3}){3}) \[")


@dataclass(frozen=True)
class Neighbour:
    router_id: str
    state: str  # Full, ExStart, ...


@dataclass(frozen=True)
class OspfView:
    """One reading of ospf6d (pure data; empty while it is down)."""

    neighbours: Mapping[str, Neighbour] = field(default_factory=dict)  # by interface
    reachable: frozenset[str] = frozenset()  # other routers the SPF tree reaches
    in_db: frozenset[str] = frozenset()  # other routers with a Router-LSA
    own_seq: int | None = None  # this router's Router-LSA sequence number
    # Reachable routers whose Router-LSA lists a link to this router-id.
    claim_me: frozenset[str] = frozenset()
    # Each /128 announced in the area -> the routers whose LSAs carry it.
    advertisers: Mapping[IPv6Address, frozenset[str]] = field(default_factory=dict)
    # Cables: router pairs (lower first) whose Router-LSAs each list the other.
    links: frozenset[tuple[str, str]] = frozenset()

    @property
    def full_links(self) -> frozenset[str]:
        return frozenset(i for i, n in self.neighbours.items() if n.state == "Full")

    def loopbacks(self, subnet: IPv6Network) -> dict[IPv4Address, IPv6Address]:
        """Each router's loopback: the /128 in `subnet` that it alone announces."""
        return {IPv4Address(next(iter(routers))): addr
                for addr, routers in self.advertisers.items()
                if addr in subnet and len(routers) == 1}

    @property
    def unreachable(self) -> frozenset[str]:
        """Dead or cut off: still in the database (Router-LSAs age out after an hour)."""
        return self.in_db - self.reachable


def spf_tree_routers(text: str) -> set[str]:
    """Router-ids in `show ipv6 ospf6 spf tree`: "+-10.0.0.1 [100]" per node, the
    root first, children indented under "|" rules."""
    return set(_SPF_NODE.findall(text))


def parse_view(me: str, neighbours: dict[str, Any], routers: dict[str, Any], spf: str,
               prefixes: dict[str, Any]) -> OspfView:
    """The view from ospf6d's answers (pure): `show ipv6 ospf6 neighbor json`,
    `... database router json`, `... spf tree`, `... database intra-prefix detail json`."""
    nbrs = {str(n.get("interfaceName", "")): Neighbour(str(n.get("neighborId", "")),
                                                        str(n.get("state", "")))
            for n in neighbours.get("neighbors", [])}
    lsas = [x for area in routers.get("areaScopedLinkStateDb", []) for x in area.get("lsa", [])]
    reachable = frozenset(spf_tree_routers(spf) - {me})
    in_db = frozenset(str(x.get("advRouter")) for x in lsas) - {me}
    own = [int(x["seqNum"]) for x in lsas if x.get("advRouter") == me and "seqNum" in x]
    claim_me = frozenset(
        str(x.get("advRouter")) for x in lsas
        if x.get("advRouter") in reachable and str(x.get("payload", "")).split("/")[0] == me)
    adv: dict[IPv6Address, set[str]] = {}
    for area in prefixes.get("areaScopedLinkStateDb", []):
        for lsa in area.get("lsa", []):
            router = str(lsa.get("advertisingRouter", ""))
            for p in lsa.get("prefix", []):
                try:
                    net = IPv6Interface(str(p.get("prefix", "")))
                except ValueError:
                    continue
                if net.network.prefixlen == 128:
                    adv.setdefault(net.ip, set()).add(router)
    listed = {(str(x.get("advRouter")), str(x.get("payload", "")).split("/")[0])
              for x in lsas}
    links = frozenset((a, b) if a < b else (b, a) for a, b in listed
                      if a != b and (b, a) in listed)
    return OspfView(nbrs, reachable, in_db, max(own, default=None), claim_me,
                    {a: frozenset(r) for a, r in adv.items()}, links)


COMMANDS = ("show ipv6 ospf6 neighbor json", "show ipv6 ospf6 database router json",
            "show ipv6 ospf6 spf tree", "show ipv6 ospf6 database intra-prefix detail json")


def read_view(vty: Vty, me: str) -> OspfView:
    """Ask ospf6d (VtyError when it does not answer) and parse its answers."""
    neighbours, routers, spf, prefixes = (vty.command("ospf6d", c) for c in COMMANDS)
    return parse_view(me, json.loads(neighbours or "{}"), json.loads(routers or "{}"), spf,
                      json.loads(prefixes or "{}"))


class Ospf(Controller):
    name = "ospf"
    period = PERIOD
    after = ("frr",)
    groups = RTMGRP_IPV6_ROUTE

    def __init__(self, cfg: NodeConfig, vty: Vty, links: Links) -> None:
        self.me = str(cfg.node.router_id)
        self.vty, self.links = vty, links
        self.view = OspfView()
        self.answered = False  # ospf6d has answered once: from then on, silence is an error
        self.stuck_after = max(STUCK_AFTER, 10 * cfg.site.mesh.dead_interval)
        # interface -> (state, since when): a neighbour between TwoWay and Full
        self.exchanging: dict[str, tuple[str, float]] = {}
        self.resets = 0

    def wants(self, msg: Any) -> bool:
        """OSPF routes appear the moment an adjacency goes Full: read ospf6d then,
        not up to PERIOD later, so the packet filter lets the new member's packets
        through with its routes. Only while some mesh link is not Full yet."""
        return (msg.get("event") == "RTM_NEWROUTE" and msg.get("proto") == RTPROT_OSPF
                and not set(self.links.names) <= self.view.full_links)

    def reconcile(self) -> bool:
        try:
            view = read_view(self.vty, self.me)
        except VtyError as e:
            if not self.answered:
                return False  # FRR not started yet (it starts after the runtime's first pass)
            self.view = OspfView()
            self.exchanging.clear()  # adjacencies start again with ospf6d
            raise RuntimeError(f"ospf6d does not answer: {e}") from e
        self.answered = True
        changed = view != self.view
        self.view = view
        self._reset_stuck(view)
        return changed

    def _reset_stuck(self, view: OspfView) -> None:
        """Reset the interface of an adjacency that has not moved on from ExStart,
        ExChange or Loading for `stuck_after` seconds. A failed reset is logged and
        tried again after as long: the view read this pass stands."""
        now = time.monotonic()
        for ifname in set(self.exchanging) - {
                i for i, n in view.neighbours.items() if n.state in EXCHANGING}:
            del self.exchanging[ifname]
        for ifname, n in view.neighbours.items():
            if n.state not in EXCHANGING:
                continue
            state, since = self.exchanging.get(ifname, ("", now))
            if state != n.state:  # it moved on: progress, however slow
                self.exchanging[ifname] = (n.state, now)
                continue
            if now - since < self.stuck_after:
                continue
            log.warning("the adjacency with %s on %s has been in %s for %.0f s: resetting "
                        "the interface", n.router_id, ifname, n.state, now - since)
            self.exchanging[ifname] = (n.state, now)  # the next reset no sooner than that
            self.resets += 1
            try:  # `clear` needs the enable node; the socket starts in the view node
                self.vty.command("ospf6d", "enable")
                self.vty.command("ospf6d", f"clear ipv6 ospf6 interface {ifname}")
            except VtyError as e:
                log.warning("resetting %s failed: %s", ifname, e)

class Conflicts(Controller):
    """Identity conflicts, held for CONFLICT_HOLD after their last evidence: twins
    reset each other's adjacencies, so the evidence comes and goes; the report should not."""

    name = "conflicts"
    after = ("ospf",)
    period = PERIOD

    def __init__(self, cfg: NodeConfig, ospf: Ospf) -> None:
        self.cfg, self.ospf = cfg, ospf
        self.own_lsa_seq: deque[tuple[float, int]] = deque()
        self.phantom_rounds: deque[tuple[float, frozenset[str]]] = deque()
        self.last: tuple[tuple[str, ...], float] = ((), -CONFLICT_HOLD)
        self.conflicts: tuple[str, ...] = ()

    def resume(self, conflicts: tuple[str, ...]) -> None:
        """A restarted runtime keeps reporting what the previous one reported."""
        if conflicts:
            self.last = (conflicts, time.monotonic())
            self.conflicts = conflicts

    def reconcile(self) -> bool:
        view = self.ospf.view
        phantoms = set(view.claim_me) - {n.router_id for n in view.neighbours.values()}
        found = self._lsa_war(view.own_seq) + self._phantom_links(phantoms)
        now = time.monotonic()
        if found:
            self.last = (found, now)
        conflicts = found or (self.last[0] if now - self.last[1] < CONFLICT_HOLD else ())
        if bool(conflicts) != bool(self.conflicts):  # said when it starts and ends
            for c in conflicts:
                log.error("CONFLICT: %s", c, extra={"fields": {"conflict": c}})
            if not conflicts:
                log.log(25, "identity conflict over")
        changed = conflicts != self.conflicts
        self.conflicts = conflicts
        return changed

    def _lsa_war(self, own_seq: int | None) -> tuple[str, ...]:
        now = time.monotonic()
        if own_seq is not None:
            self.own_lsa_seq.append((now, own_seq))
        while self.own_lsa_seq and now - self.own_lsa_seq[0][0] > LSA_WAR_WINDOW:
            self.own_lsa_seq.popleft()
        if len(self.own_lsa_seq) >= 2:
            bumps = self.own_lsa_seq[-1][1] - self.own_lsa_seq[0][1]
            if bumps > LSA_WAR_BUMPS:
                return (f"another node uses router-id {self.cfg.node.router_id}: this node's "
                        f"Router-LSA was re-originated {bumps} times in "
                        f"{self.own_lsa_seq[-1][0] - self.own_lsa_seq[0][0]:.0f} s; its "
                        f"hardware identity ({self.cfg.hw}) is probably duplicated",)
        return ()

    def _phantom_links(self, phantoms: set[str]) -> tuple[str, ...]:
        """A link to this router-id in a neighbour's LSA outlives a real adjacency
        by at most a dead interval. One seen in most rounds of the last
        PHANTOM_WINDOW seconds is another node's."""
        now = time.monotonic()
        window = max(PHANTOM_WINDOW, 10 * self.cfg.site.mesh.dead_interval)
        self.phantom_rounds.append((now, frozenset(phantoms)))
        while now - self.phantom_rounds[0][0] > window:
            self.phantom_rounds.popleft()
        rounds = len(self.phantom_rounds)
        if rounds < PHANTOM_ROUNDS or now - self.phantom_rounds[0][0] < window / 2:
            return ()
        seen = [r for r in sorted(set().union(*(p for _, p in self.phantom_rounds)))
                if sum(r in p for _, p in self.phantom_rounds) * 2 >= rounds]
        if not seen:
            return ()
        return (f"another node uses router-id {self.cfg.node.router_id}: {', '.join(seen)} "
                f"list{'s' if len(seen) == 1 else ''} a link to it that this node does "
                f"not have, in most of the last {window:.0f} s; its hardware identity "
                f"({self.cfg.hw}) is probably duplicated",)
