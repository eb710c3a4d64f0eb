"""Control-plane slots: which nodes run etcd and the Kubernetes control plane,
chosen by the mesh itself (pure functions, no side effects).

The site says how many slots there are (`control_plane.count`, default 3) and,
optionally, which PCs may hold one (`control_plane.nodes`). There is no
coordinator: a node takes a slot by announcing a /128 on `lo` inside the site's
control-plane subnet (`<ula>:0003::/64`, see mesh.plan), as pod blocks are
claimed (mesh.pods):

    <ula>:0003 : TTTT:SSSS : RRRR:RRRR /128
                 term slot   holder's OSPF router-id

Every node thus sees every claim and its holder in its kernel's IPv6 routes. A
claim counts only when the router it names advertises it (firstboot's
valid_claims). Of two holders of one slot, the one with the higher term keeps
it, and of equal terms the lower router-id. A slot's first holder has term 0;
a node that takes a vacated slot over takes the term after the last it saw,
so a former holder that comes back later (its term older) leaves it there.

Who takes a free slot: the nodes that may hold one and hold none, in router-id
order, take the free slots in slot order; so every node, seeing the same mesh,
reaches the same answer, and a cold start settles without a contest. Nodes that
can run the control plane (its binaries installed, the CPUs and memory kubeadm
asks for) announce themselves as candidates, a /128 in the same subnet with slot
CANDIDATE_SLOT, and go first: a small PC takes a slot only when too few
candidates wait (etcd then runs there, and the status says the control plane
does not). A small holder keeps its slot until it leaves: no takeover churn. A slot
that was held and is no longer (its holder is gone from the mesh) waits
`control_plane.grace` seconds first: a holder that reboots comes back to its
slot (it remembers it) instead of being replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from mesh import plan
from mesh.site import Site


@dataclass(frozen=True, order=True)
class SlotClaim:
    """One node's announcement: `owner` (router-id) holds control-plane `slot`, in
    its `term` (one more for each takeover)."""

    slot: int
    owner: IPv4Address
    term: int = 0

    def beats(self, other: SlotClaim) -> bool:
        """Whether this claim keeps the slot against `other`'s."""
        return (self.term, -int(self.owner)) > (other.term, -int(other.owner))


MAX_TERM = 0xFFFF
CANDIDATE_SLOT = 0xFFFF  # the slot field of a candidate's /128: "could run it"


def slot_subnet(ula: IPv6Network) -> IPv6Network:
    return plan.subnet(ula, plan.CONTROL_PLANE_SUBNET)


def claim_address(ula: IPv6Network, claim: SlotClaim) -> IPv6Address:
    return IPv6Address(int(slot_subnet(ula).network_address) | (claim.term << 48)
                       | (claim.slot << 32) | int(claim.owner))


def parse_claim(ula: IPv6Network, count: int, addr: IPv6Address) -> SlotClaim | None:
    """The claim a /128 announces, or None if it is not a slot of this site."""
    if addr not in slot_subnet(ula):
        return None
    iid = int(addr) & ((1 << 64) - 1)
    term, slot, owner = iid >> 48, (iid >> 32) & 0xFFFF, IPv4Address(iid & 0xFFFFFFFF)
    if slot >= count or int(owner) in (0, 0xFFFFFFFF):
        return None
    return SlotClaim(slot, owner, term)


def candidate_address(ula: IPv6Network, owner: IPv4Address) -> IPv6Address:
    """The /128 by which `owner` says it can run the control plane."""
    return IPv6Address(int(slot_subnet(ula).network_address) | (CANDIDATE_SLOT << 32)
                       | int(owner))


def parse_candidate(ula: IPv6Network, addr: IPv6Address) -> IPv4Address | None:
    """The router-id a candidate's /128 names, or None if it is not one."""
    if addr not in slot_subnet(ula):
        return None
    iid = int(addr) & ((1 << 64) - 1)
    owner = iid & 0xFFFFFFFF
    if iid >> 32 != CANDIDATE_SLOT or owner in (0, 0xFFFFFFFF):
        return None
    return IPv4Address(owner)


def keepers(claims: Iterable[SlotClaim]) -> dict[int, SlotClaim]:
    """The claim that keeps each slot: the highest term, then the lowest router-id."""
    result: dict[int, SlotClaim] = {}
    for c in claims:
        if c.slot not in result or c.beats(result[c.slot]):
            result[c.slot] = c
    return result


def holders(claims: Iterable[SlotClaim]) -> dict[int, IPv4Address]:
    """Who keeps each slot."""
    return {s: c.owner for s, c in keepers(claims).items()}


def eligible(site: Site) -> frozenset[IPv4Address] | None:
    """The router-ids that may hold a slot (derived from the listed PCs), or None: any."""
    nodes = site.control_plane.nodes
    if not nodes:
        return None
    return frozenset(plan.derive(hw, site.mesh.ula).router_id for hw in nodes)


def choose_slot(me: IPv4Address, count: int, others: Iterable[SlotClaim],
                current: int | None, routers: Iterable[IPv4Address],
                allowed: frozenset[IPv4Address] | None,
                claimable: Callable[[int], bool] = lambda slot: True,
                term: int = 0, preferred: frozenset[IPv4Address] = frozenset()
                ) -> int | None:
    """The slot this node should hold, or None.

    `others`: the other nodes' claims; `current`: this node's slot (also one
    remembered across a reboot) in `term`; `routers`: the router-ids this node
    reaches; `allowed`: who may hold a slot (None: anyone); `claimable(slot)`:
    whether a free slot may be taken now (False while a vacated slot's grace runs);
    `preferred`: the candidates (this node too, if it is one), who go first.
    """
    if allowed is not None and me not in allowed:
        return None  # also when it held one: the site no longer lists this PC
    held = holders(c for c in others if c.owner != me)
    if current is not None and current < count:
        rival = keepers(c for c in others if c.owner != me and c.slot == current).get(current)
        if rival is None or SlotClaim(current, me, term).beats(rival):
            return current
    free = [s for s in range(count) if s not in held and claimable(s)]
    taken_by = set(held.values())
    waiting = sorted({r for r in routers if allowed is None or r in allowed} - taken_by | {me},
                     key=lambda r: (r not in preferred, int(r)))
    rank = waiting.index(me)
    return free[rank] if rank < len(free) else None
