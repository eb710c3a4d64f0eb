"""The control-plane slot this node holds, if any: claimed, kept or yielded
through OSPFv3 like a pod block (mesh.controlplane), remembered across reboots.

The claim is a /128 on `lo` that ospf6d announces; every node reads the others'
from its kernel's routes, counts only those their owner advertises (the OSPF
view), and runs the same pure choice. What a slot holder runs (etcd and the
Kubernetes control plane) follows the slot this controller reports.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from firstboot.files import write_atomic
from firstboot.node import NodeConfig
from firstboot.ospf import Ospf
from firstboot.overlay import Routes, _attr, valid_claims
from firstboot.runtime import Controller
from mesh import controlplane
from mesh.controlplane import SlotClaim

log = logging.getLogger("kubermesh.controlplane")

SETTLE = 10.0  # a fresh node waits this long at most to learn others' claims
ATTACHED_FOR = 3.0  # or this long after its first route: the LSDB has arrived
# A fresh node in a mesh that has slot holders waits this long after its first
# route before taking a slot it never saw held: after a power cut, the holders
# coming back announce their remembered slots within seconds of their routes; and
# it gives the conflict checks (firstboot.ospf's 30 s windows) time to find a twin
# (a duplicated hardware identity) out before it takes its double's slot. Under
# load they can take longer: the etcd join must not replace a live member either.
FRESH_WAIT = 30.0


class Slots(Controller):
    name = "control-plane"
    after = ("routes", "ospf", "conflicts")
    period = 5.0

    def __init__(self, cfg: NodeConfig, ipr: Any, routes: Routes, ospf: Ospf,
                 clock: Callable[[], float] = time.monotonic, candidate: bool = False,
                 conflicted: Callable[[], bool] = lambda: False) -> None:
        """`candidate`: this node can run the Kubernetes control plane (it says so in
        the mesh, and candidates take free slots first); `conflicted`: whether another
        node is reported to use this node's identity (it then takes no slot)."""
        self.conflicted = conflicted
        self.cfg, self.ipr, self.routes, self.ospf, self.clock = cfg, ipr, routes, ospf, clock
        self.candidate = candidate
        self.candidates: frozenset[IPv4Address] = frozenset()  # the others that say so
        self.ula = cfg.site.mesh.ula
        self.settings = cfg.site.control_plane
        self.subnet = controlplane.slot_subnet(self.ula)
        self.me = cfg.node.router_id
        self.allowed = controlplane.eligible(cfg.site)
        self.slot, self.term = self._remembered()
        self.returning = self.slot is not None  # until its first choice
        self.started = clock()
        self.attached_since: float | None = None
        self.seen_held: dict[int, float] = {}  # slot -> when it was last seen held
        self.last_term: dict[int, int] = {}  # slot -> the highest term seen
        self.claims: dict[IPv6Address, SlotClaim] = {}  # others' counted claims
        self.forged: dict[IPv6Address, SlotClaim] = {}
        self.addresses_ok = False
        self.impostor: list[SlotClaim] = []  # claims with this router-id not made here

    def wants(self, msg: Any) -> bool:
        return bool(msg.get("event") == "RTM_DELADDR")  # our claim removed by hand

    def message(self, msg: Any) -> None:
        self.addresses_ok = False

    def overflow(self) -> None:
        self.addresses_ok = False

    def next_run(self) -> float | None:
        return 1.0 if self.slot is None else self.period

    def _remembered(self) -> tuple[int | None, int]:
        """(slot, term) this node held before a restart or reboot, if any."""
        path = self.cfg.paths.control_plane_state
        try:
            state = json.loads(path.read_text())
            slot, term = state["slot"], state.get("term", 0)
        except FileNotFoundError:
            return None, 0
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("ignoring %s: %s", path, e)
            return None, 0
        if slot is None:
            return None, 0
        if not isinstance(slot, int) or not 0 <= slot < self.settings.count or \
                not isinstance(term, int) or not 0 <= term <= controlplane.MAX_TERM:
            log.warning("ignoring %s: slot %r (term %r) is not one of this site's %d", path,
                        slot, term, self.settings.count)
            return None, 0
        log.info("remembered control-plane slot %d (term %d)", slot, term)
        return slot, term

    def holders(self) -> dict[int, IPv4Address]:
        """Every slot's holder as this node sees it (itself included)."""
        held = controlplane.holders(self.claims.values())
        if self.slot is not None:
            held[self.slot] = self.me
        return held

    def reconcile(self) -> bool:
        now = self.clock()
        before = self._seen()
        parsed = {a: c for a in self.routes.table if a in self.subnet
                  and (c := controlplane.parse_claim(self.ula, self.settings.count, a))
                  is not None}
        claims = {a: c for a, c in parsed.items() if c.owner != self.me}
        # A claim that names this node's router-id and is not the one on its lo: a
        # twin (a PC with the same hardware identity) holds it, or this node's own
        # from a life it does not remember lingers until ospf6d flushes it. Either
        # way, taking a slot now could replace the twin's etcd member by this one.
        impostor = sorted({c for c in parsed.values() if c.owner == self.me
                           and (c.slot, c.term) != (self.slot, self.term)})
        if impostor and impostor != self.impostor:
            log.warning("control-plane claims with this node's router-id %s that this node "
                        "did not make: %s; %s", self.me, ", ".join(
                            f"slot {c.slot} (term {c.term})" for c in impostor),
                        "keeping this node's slot" if self.slot is not None
                        else "taking no slot while they are announced")
        self.impostor = impostor
        counted, forged = valid_claims(claims, self.ospf.view.advertisers)
        # Candidates count, as claims do, only where their owner advertises them.
        advertisers = self.ospf.view.advertisers
        self.candidates = frozenset(
            o for a in self.routes.table if a in self.subnet
            and (o := controlplane.parse_candidate(self.ula, a)) is not None and o != self.me
            and str(o) in advertisers.get(a, ()))
        for addr in forged.keys() - self.forged.keys():
            log.warning("ignoring control-plane claim %s on slot %d: it embeds router-id %s "
                        "but is advertised by %s", addr, forged[addr].slot, forged[addr].owner,
                        ", ".join(sorted(self.ospf.view.advertisers.get(addr, ()))))
        self.claims, self.forged = counted, forged
        for c in counted.values():  # forged claims neither hold a slot nor keep it held
            self.seen_held[c.slot] = now
            self.last_term[c.slot] = max(c.term, self.last_term.get(c.slot, 0))
        if self.slot is not None:
            self.seen_held[self.slot] = now
            self.last_term[self.slot] = max(self.term, self.last_term.get(self.slot, 0))
        if self.routes.table and self.attached_since is None:
            self.attached_since = now
        if self.slot is None and (self.impostor or self.conflicted()):
            # Its twin may hold a slot under this very router-id: joining etcd as
            # that slot's holder would replace the twin's member. One held is kept.
            if not self.addresses_ok:
                self._apply_address()
            return self._seen() != before
        if self.returning:
            # Back with a remembered slot: announce it at once, so that nobody takes
            # it as free while this node settles; keep it unless a claim with a later
            # term (an heir, after the grace) or an equal term and a lower router-id
            # holds it: the normal rule, below.
            if not self.addresses_ok:
                self._apply_address()
        elif self.slot is None and (
                (now - self.started < SETTLE and (
                    self.attached_since is None or now - self.attached_since < ATTACHED_FOR))
                or (self.attached_since is None and self.settings.count > 1)):
            # Others' claims are not all known yet; and a PC that reaches nobody (not
            # cabled yet, or its neighbours not up) takes no slot: alone it founds no
            # cluster anyway (that waits for every slot to be held), and a claim made
            # alone would contest a holder's when it is cabled into a running mesh.
            if not self.addresses_ok:
                self._apply_address()  # a candidate says so at once: others are settling
            return False
        view = self.ospf.view
        routers = {IPv4Address(r) for r in view.in_db & view.reachable}
        grace = self.settings.grace
        attached = self.attached_since if self.attached_since is not None else self.started
        anyone_holds = bool(counted) or self.slot is not None
        # A vacated slot is taken over only on the side of a split that holds most
        # slots (etcd's quorum): a cut-off minority replaces nobody, and its terms
        # do not grow past those of the side that kept the cluster.
        majority = len(self.holders()) > self.settings.count // 2

        def claimable(slot: int) -> bool:
            last = self.seen_held.get(slot)
            if last is not None:  # vacated: its holder may be rebooting
                return majority and now - last >= grace
            return not anyone_holds or now - attached >= FRESH_WAIT

        # Without a slot, avoid every claim seen, checked or not yet; keeping one
        # yields only to a checked one.
        slot = controlplane.choose_slot(
            self.me, self.settings.count,
            (claims if self.slot is None else counted).values(), self.slot, routers,
            self.allowed, claimable, self.term,
            self.candidates | ({self.me} if self.candidate else set()))
        if self.returning and slot != self.slot:
            rival = controlplane.holders(counted.values()).get(self.slot or 0)
            log.warning("control-plane slot %s was taken over by router-id %s while this "
                        "node was away: leaving it there", self.slot, rival)
        self.returning = False
        if slot != self.slot:
            self._take(slot)
        if not self.addresses_ok:
            self._apply_address()
        return self._seen() != before

    def _seen(self) -> tuple[int | None, tuple[tuple[int, IPv4Address], ...], int]:
        """What a change of wakes the controllers after this one."""
        return self.slot, tuple(sorted(self.holders().items())), len(self.forged)

    def _take(self, slot: int | None) -> None:
        if self.slot is not None and slot != self.slot:
            rival = controlplane.keepers(
                c for c in self.claims.values() if c.slot == self.slot).get(self.slot)
            if rival is not None:
                log.warning("yielding control-plane slot %d to router-id %s (term %d; ours: "
                            "%s, term %d)", self.slot, rival.owner, rival.term, self.me,
                            self.term)
            else:
                log.warning("giving up control-plane slot %d: the site does not list this "
                            "node", self.slot)
        if slot is not None:
            # A slot seen held before is taken over: the term after the last one seen.
            seen = self.last_term.get(slot)
            self.term = min(seen + 1, controlplane.MAX_TERM) if seen is not None else 0
            log.info("taking control-plane slot %d of %d (term %d)", slot, self.settings.count,
                     self.term, extra={"fields": {"control_plane_slot": str(slot)}})
        self.slot = slot
        self.addresses_ok = False
        write_atomic(self.cfg.paths.control_plane_state,
                     json.dumps({"slot": slot, "term": self.term}) + "\n", 0o644)

    def _apply_address(self) -> None:
        lo = self.ipr.link_lookup(ifname="lo")[0]
        have = {ipaddress.IPv6Address(_attr(a, "IFA_ADDRESS"))
                for a in self.ipr.get_addr(index=lo, family=socket.AF_INET6)}
        want = ({controlplane.claim_address(self.ula, SlotClaim(self.slot, self.me, self.term))}
                if self.slot is not None else set())
        if self.candidate:
            want.add(controlplane.candidate_address(self.ula, self.me))
        for a in sorted(want - have):
            self.ipr.addr("add", index=lo, address=str(a), prefixlen=128)
        for a in sorted(a for a in have - want if a in self.subnet):
            self.ipr.addr("del", index=lo, address=str(a), prefixlen=128)
        self.addresses_ok = True

    def close(self) -> None:
        """The claim stays: a runtime restart is not a holder leaving (the next run
        takes the same slot, remembered); a node that dies withdraws it with its LSAs."""

    def report(self) -> dict[str, Any]:
        now = self.clock()
        grace = self.settings.grace
        held = self.holders()
        return {
            "count": self.settings.count,
            "slot": self.slot,
            "term": self.term,
            "holders": {str(s): str(r) for s, r in sorted(held.items())},
            # Vacated slots whose grace still runs: slot -> seconds left.
            "vacated": {str(s): round(grace - (now - t), 1) for s, t in
                        sorted(self.seen_held.items()) if s not in held and now - t < grace},
            "forged": sorted(str(a) for a in self.forged),
            # Claims with this node's router-id that it did not make (a twin's).
            "not_mine": [f"slot {c.slot} term {c.term}" for c in self.impostor],
            # Nodes that can run the control plane, this one included if it can.
            "candidates": sorted(str(r) for r in self.candidates
                                 | ({self.me} if self.candidate else set())),
        }
