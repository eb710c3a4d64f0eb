"""Control-plane slots (mesh.controlplane): claims as /128s, and the choice every
node makes from the same view; the site's [control_plane] table."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from firstboot.controlplane import Slots
from firstboot.overlay import Routes
from mesh import controlplane, plan
from mesh.controlplane import SlotClaim, choose_slot
from mesh.site import SiteError, new_site_toml, parse_site
from tests.unit.fakes import Kernel, idle_ospf, node_config

ULA = IPv6Network("fd12:3456:789a::/48")
R = [IPv4Address(f"10.0.0.{i}") for i in range(1, 8)]


def test_a_claim_is_a_slot_and_its_holder_in_one_address() -> None:
    c = SlotClaim(2, IPv4Address("93.201.250.122"))
    addr = controlplane.claim_address(ULA, c)
    assert addr == IPv6Address("fd12:3456:789a:3:0:2:5dc9:fa7a")
    assert controlplane.parse_claim(ULA, 3, addr) == c
    assert controlplane.parse_claim(ULA, 2, addr) is None  # no slot 2 of 2
    assert controlplane.parse_claim(ULA, 3, IPv6Address("fd12:3456:789a:2:0:2:5dc9:fa7a")) is None
    assert controlplane.parse_claim(ULA, 3, IPv6Address("fd12:3456:789a:3::2:0:0")) is None


def test_a_cold_start_gives_the_slots_to_the_lowest_router_ids_without_a_contest() -> None:
    """Every node sees the same routers and no claims: each reaches the same answer."""
    got = {me: choose_slot(me, 3, [], None, set(R) - {me}, None) for me in R}
    assert got == {R[0]: 0, R[1]: 1, R[2]: 2, R[3]: None, R[4]: None, R[5]: None, R[6]: None}


def test_nodes_that_can_run_the_control_plane_go_first() -> None:
    """R[4] and R[6] announce themselves as candidates: they take two of the three
    slots; of the rest, the lowest router-id takes the third. No candidates: as before."""
    cands = frozenset({R[4], R[6]})
    got = {me: choose_slot(me, 3, [], None, set(R) - {me}, None, preferred=cands) for me in R}
    assert got == {R[4]: 0, R[6]: 1, R[0]: 2, R[1]: None, R[2]: None, R[3]: None, R[5]: None}
    # A small holder keeps its slot when a candidate appears later: no churn.
    assert choose_slot(R[0], 3, [], 2, set(R), None, preferred=cands) == 2
    addr = controlplane.candidate_address(ULA, R[4])
    assert addr == IPv6Address("fd12:3456:789a:3:0:ffff:a00:5")
    assert controlplane.parse_candidate(ULA, addr) == R[4]
    assert controlplane.parse_claim(ULA, 7, addr) is None  # a candidate holds no slot
    assert controlplane.parse_candidate(ULA, controlplane.claim_address(
        ULA, SlotClaim(0, R[4]))) is None


def test_a_holder_keeps_its_slot_unless_a_lower_router_id_holds_it_too() -> None:
    # R[5] remembered slot 0 across a reboot; nobody else holds it: it keeps it.
    assert choose_slot(R[5], 3, [], 0, set(R), None) == 0
    # A higher claimant does not take it; a lower one does, and R[5] waits.
    assert choose_slot(R[5], 3, [SlotClaim(0, R[6])], 0, set(R), None) == 0
    assert choose_slot(R[5], 3, [SlotClaim(0, R[4]), SlotClaim(1, R[0]), SlotClaim(2, R[1])],
                       0, set(R), None) is None
    # Yielding, it takes a free slot if it is first in line for one.
    assert choose_slot(R[5], 3, [SlotClaim(0, R[4]), SlotClaim(1, R[0])], 0, {R[4], R[0]},
                       None) == 2


def test_an_heirs_later_term_keeps_the_slot_against_its_former_holder() -> None:
    heir = SlotClaim(1, R[5], term=3)
    addr = controlplane.claim_address(ULA, heir)
    assert controlplane.parse_claim(ULA, 3, addr) == heir
    # R[1] held slot 1 in term 2, died, and comes back: the heir keeps it although
    # R[1]'s router-id is lower; of equal terms, the lower router-id keeps it.
    full = [heir, SlotClaim(0, R[0]), SlotClaim(2, R[2])]
    assert choose_slot(R[1], 3, full, 1, set(R), None, term=2) is None
    assert choose_slot(R[5], 3, [SlotClaim(1, R[1], 2)], 1, set(R), None, term=3) == 1
    assert choose_slot(R[5], 3, [SlotClaim(1, R[1], 3)], 1, set(R), None, term=3) is None
    assert controlplane.holders([heir, SlotClaim(1, R[1], 2)]) == {1: R[5]}


def test_a_pc_the_site_no_longer_lists_gives_its_slot_up() -> None:
    assert choose_slot(R[0], 3, [], 0, set(R), frozenset({R[1], R[2], R[3]})) is None


def test_a_vacated_slot_goes_to_the_first_in_line_after_its_grace() -> None:
    others = [SlotClaim(0, R[0]), SlotClaim(2, R[2])]  # R[1], holder of 1, is gone
    alive = {R[0], R[2], R[3], R[4]}
    waiting = lambda s: s != 1  # noqa: E731 - slot 1's grace runs
    assert choose_slot(R[3], 3, others, None, alive, None, waiting) is None
    assert choose_slot(R[3], 3, others, None, alive, None) == 1
    assert choose_slot(R[4], 3, others, None, alive, None) is None  # R[3] is first


def test_only_the_listed_pcs_hold_slots() -> None:
    allowed = frozenset({R[4], R[5], R[6]})
    assert choose_slot(R[0], 3, [], None, set(R), allowed) is None
    # The others' ranks count only eligible routers: R[4] is first of them.
    assert [choose_slot(r, 3, [], None, set(R), allowed) for r in R[4:]] == [0, 1, 2]


def test_the_site_says_how_many_slots_and_who_may_hold_them() -> None:
    text = new_site_toml("w1")
    site = parse_site(tomllib.loads(text))
    assert (site.control_plane.count, site.control_plane.nodes,
            site.control_plane.grace) == (3, (), 300)
    assert controlplane.eligible(site) is None
    ids = ["dmi:4c4c4544-0042-3510-8052-b3c04f4a3732", "mac:52:54:00:12:34:56",
           "MAC:52:54:00:12:34:57"]
    listed = text.replace("nodes = []", f"nodes = {ids!r}".replace("'", '"'))
    site = parse_site(tomllib.loads(listed))
    assert [str(n) for n in site.control_plane.nodes] == [i.lower() for i in ids]
    assert controlplane.eligible(site) == frozenset({
        plan.derive(n, site.mesh.ula).router_id for n in site.control_plane.nodes})
    for bad, message in [
        ('nodes = ["52:54:00:12:34:56"]', "control_plane.nodes: '52:54:00:12:34:56' is not a "
                                          "hardware identity"),
        ('nodes = ["mac:52:54:00:12:34:56"]', "control_plane.nodes: 1 listed, fewer than "
                                              "control_plane.count (3)"),
        ("count = 0", "control_plane.count: 0 is out of range 1..7"),
    ]:
        broken = text.replace("nodes = []", bad) if "nodes" in bad else text.replace(
            "count = 3", bad)
        with pytest.raises(SiteError) as e:
            parse_site(tomllib.loads(broken))
        assert message in str(e.value), str(e.value)


# --- the controller (firstboot.controlplane.Slots) over a fake kernel and OSPF view


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def slots_node(tmp_path: Path, conflicted: list[bool] | None = None
               ) -> tuple[Slots, Kernel, Clock]:
    cfg = node_config(tmp_path, router_id=IPv4Address("10.0.0.5"))
    kernel, clock = Kernel(), Clock()
    ospf = idle_ospf(cfg, tmp_path)
    flag = conflicted if conflicted is not None else [False]
    return Slots(cfg, kernel, Routes(cfg, kernel), ospf, clock=clock,
                 conflicted=lambda: flag[0]), kernel, clock


def step(s: Slots, clock: Clock, seconds: float) -> None:
    """Rounds of the routes and slots controllers over `seconds`."""
    for _ in range(int(seconds)):
        clock.now += 1.0
        s.routes.full = True
        s.routes.reconcile()
        s.reconcile()


def announce(s: Slots, kernel: Kernel, claim: SlotClaim, advertiser: str | None = None) -> None:
    """`claim` routed to this node, advertised by its owner (or by `advertiser`)."""
    addr = controlplane.claim_address(s.ula, claim)
    kernel.add_route(addr, [("fe80::1", 2)])
    view = s.ospf.view
    routers = {advertiser or str(claim.owner)}
    s.ospf.view = replace(view, advertisers={**view.advertisers, addr: frozenset(routers)},
                          reachable=view.reachable | routers, in_db=view.in_db | routers)


def test_a_pc_that_reaches_nobody_takes_no_slot(tmp_path: Path) -> None:
    """Not cabled yet: it takes no slot (one made alone would contest a running mesh's
    holder once cabled); cabled to a mesh that holds two of three, it takes the third."""
    s, kernel, clock = slots_node(tmp_path)
    step(s, clock, 60)
    assert s.slot is None and not kernel.addrs
    announce(s, kernel, SlotClaim(0, IPv4Address("10.0.0.1")))
    announce(s, kernel, SlotClaim(1, IPv4Address("10.0.0.2")))
    step(s, clock, 20)
    assert s.slot is None  # a fresh node's wait: a twin would be found out by then
    step(s, clock, 20)
    assert s.slot == 2
    mine = controlplane.claim_address(s.ula, SlotClaim(2, s.me))
    assert (str(mine), 128) in kernel.addrs


def test_a_twins_claim_keeps_this_node_from_taking_a_slot(tmp_path: Path) -> None:
    """A claim naming this node's router-id that it did not make is a twin's: the node
    takes no slot (it would replace the twin's etcd member) and says so."""
    s, kernel, clock = slots_node(tmp_path)
    announce(s, kernel, SlotClaim(0, s.me))  # the twin's, with our router-id
    announce(s, kernel, SlotClaim(1, IPv4Address("10.0.0.2")))
    step(s, clock, 60)
    assert s.slot is None and s.report()["not_mine"] == ["slot 0 term 0"]
    # The twin gone (its claim withdrawn), the node takes a free slot.
    kernel.del_route(controlplane.claim_address(s.ula, SlotClaim(0, s.me)))
    step(s, clock, 30)
    assert s.slot == 0 and s.report()["not_mine"] == []


def test_a_node_in_an_identity_conflict_takes_no_slot_and_keeps_its_own(
        tmp_path: Path) -> None:
    """Its twin (whose claims ospf6d may never route to it: they carry its own
    router-id) could hold a slot under this router-id: no slot is taken while the
    conflict is reported; the node that held one before the conflict keeps it."""
    conflict = [True]
    s, kernel, clock = slots_node(tmp_path, conflict)
    announce(s, kernel, SlotClaim(1, IPv4Address("10.0.0.2")))
    step(s, clock, 120)
    assert s.slot is None
    conflict[0] = False
    step(s, clock, 40)
    assert s.slot == 0
    conflict[0] = True
    step(s, clock, 10)
    assert s.slot == 0
