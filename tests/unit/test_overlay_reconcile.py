"""The routes and overlay controllers against a kernel stand-in: what they learn,
install and remove, and how one failing object is reported and retried without
holding up the others. (The lab tests run them against the real kernel and FRR.)"""

from __future__ import annotations

import json
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest

from firstboot import overlay as overlay_mod
from firstboot.node import NodeConfig
from firstboot.ospf import Ospf, OspfView
from firstboot.overlay import RTPROT_KUBERMESH, RTPROT_SERVICES, NextHop, Overlay, Routes
from mesh import cni, pods
from mesh.pods import BlockClaim
from mesh.site import Site
from tests.unit.fakes import ME, Kernel, Msg, idle_ospf, link_msg, node_config, route_msg

B1, B2, B3 = (IPv4Network(f"10.244.{i}.0/24") for i in (1, 2, 3))


class Node:
    """One node's routes and overlay controllers over a fake kernel and OSPF view."""

    def __init__(self, tmp_path: Path, site: Site | None = None) -> None:
        self.kernel = Kernel()
        self.cfg: NodeConfig = node_config(tmp_path, site)
        self.site = self.cfg.site
        self.routes = Routes(self.cfg, self.kernel)
        self.ospf: Ospf = idle_ospf(self.cfg, tmp_path)
        self.pokes: list[str] = []
        self.overlay = Overlay(self.cfg, self.kernel, self.routes, self.ospf, self.pokes.append)

    def claim(self, block: IPv4Network, owner: str, hops: list[tuple[str, int]],
              advertised_by: str | None = None) -> Msg:
        """Another node's claim: its route, and the router the LSDB says announces it
        (the owner, unless `advertised_by`; "" for not in the LSDB yet)."""
        c = BlockClaim(block, IPv4Address(owner))
        msg = self.kernel.claim(self.site, c, hops)
        by = owner if advertised_by is None else advertised_by
        if by:
            adv = dict(self.ospf.view.advertisers)
            adv[pods.claim_address(self.site.mesh.ula, c)] = frozenset({by})
            self.ospf.view = OspfView(advertisers=adv)
        return msg

    def my_claim(self, block: IPv4Network) -> tuple[str, int]:
        return str(pods.claim_address(self.site.mesh.ula, BlockClaim(block, ME))), 128

    def reconcile(self) -> bool:
        self.routes.reconcile()
        return self.overlay.reconcile()


@pytest.fixture(autouse=True)
def no_settling(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh node chooses its block at once (no waiting to learn others' claims)."""
    monkeypatch.setattr(overlay_mod, "SETTLE", 0.0)


def test_routes_each_block_with_its_claims_next_hops(tmp_path: Path) -> None:
    n = Node(tmp_path)
    n.claim(B1, "10.0.0.1", [("fe80::1", 2), ("fe80::2", 3)])
    n.claim(B2, "10.0.0.9", [("fe80::2", 3)])
    assert n.reconcile() is True
    k = n.kernel
    assert n.overlay.failures == []
    assert set(k.v4) == {str(B1), str(B2)}
    assert k.via(B1) == [("fe80::1", 2), ("fe80::2", 3)]
    assert k.via(B2) == [("fe80::2", 3)]
    assert all(r["proto"] == RTPROT_KUBERMESH for r in k.v4.values())
    mine = n.overlay.block
    assert mine is not None and mine not in (B1, B2)
    # Announced on lo: the claim /128 (ospf6d carries it) and the node's /32.
    assert k.addrs == {(str(pods.node_address(mine)), 32), n.my_claim(mine)}
    # The service range on lo: the node reaches ClusterIPs through kube-proxy's DNAT.
    assert k.device_routes == {str(n.site.services.range): (k.LO, RTPROT_SERVICES)}
    assert n.overlay.routed == {B1, B2}
    cfg = n.cfg.paths
    assert json.loads(cfg.overlay_state.read_text()) == {"block": str(mine)}
    assert json.loads((cfg.cni_conf_dir / cni.CNI_FILE).read_text()) == json.loads(
        cni.render_cni(mine, cfg.cni_data_dir))
    assert n.reconcile() is False  # nothing changed
    # The claim goes: so does its IPv4 route.
    n.routes.message(k.del_route(pods.claim_address(n.site.mesh.ula,
                                                    BlockClaim(B2, IPv4Address("10.0.0.9")))))
    assert n.reconcile() is True
    assert set(k.v4) == {str(B1)}


def test_a_failing_route_is_retried_and_does_not_block_the_others(tmp_path: Path) -> None:
    n = Node(tmp_path)
    for i, b in enumerate((B1, B2, B3)):
        n.claim(b, f"10.0.1.{i + 1}", [("fe80::1", 2)])
    n.kernel.fail_next.add(str(B2))
    with pytest.raises(RuntimeError, match=rf"1 failed: route {B2} via fe80::1%2: "):
        n.reconcile()
    assert set(n.kernel.v4) == {str(B1), str(B3)}
    assert len(n.overlay.failures) == 1
    # The block is announced all the same: a route elsewhere does not hold it up.
    assert n.overlay.block is not None
    assert n.my_claim(n.overlay.block) in n.kernel.addrs
    n.reconcile()  # the retry (the runtime's backoff): it reads the kernel again
    assert set(n.kernel.v4) == {str(b) for b in (B1, B2, B3)}
    assert n.overlay.failures == [] and n.overlay.routed == {B1, B2, B3}


def test_yields_to_a_lower_router_id_and_cleans_up(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    n = Node(tmp_path)
    n.reconcile()
    mine = n.overlay.block
    assert mine is not None
    n.routes.message(n.claim(mine, "10.0.0.1", [("fe80::1", 2)]))  # lower than ME
    assert n.reconcile() is True
    new = n.overlay.block
    assert new is not None and new != mine
    assert n.my_claim(mine) not in n.kernel.addrs
    assert (str(pods.node_address(mine)), 32) not in n.kernel.addrs
    assert n.my_claim(new) in n.kernel.addrs
    assert n.kernel.via(mine) == [("fe80::1", 2)]  # now routed to its keeper
    assert str(new) in n.cfg.paths.overlay_state.read_text()
    assert f"yielding pod block {mine} to router-id 10.0.0.1" in caplog.text


def test_keeps_its_block_against_a_higher_router_id(tmp_path: Path) -> None:
    n = Node(tmp_path)
    n.reconcile()
    mine = n.overlay.block
    assert mine is not None
    n.routes.message(n.claim(mine, "10.0.0.200", [("fe80::1", 2)]))
    n.reconcile()
    assert n.overlay.block == mine and str(mine) not in n.kernel.v4


def test_a_forged_claim_evicts_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Node(tmp_path)
    n.reconcile()
    mine = n.overlay.block
    assert mine is not None
    # 10.0.0.9 announces a claim on our block that embeds the lower router-id 10.0.0.1.
    msg = n.claim(mine, "10.0.0.1", [("fe80::1", 2)], advertised_by="10.0.0.9")
    n.routes.message(msg)
    assert n.reconcile() is True  # the forged claim is news for the status
    assert n.overlay.block == mine
    assert n.my_claim(mine) in n.kernel.addrs and str(mine) not in n.kernel.v4
    forged = IPv6Address(msg.get_attr("RTA_DST"))
    assert set(n.overlay.forged) == {forged} and n.overlay.claims == {}
    assert caplog.text.count("ignoring claim") == 1
    n.reconcile()
    assert caplog.text.count("ignoring claim") == 1  # said once


def test_a_claim_not_in_the_lsdb_yet_waits_and_asks_ospf_again(tmp_path: Path) -> None:
    n = Node(tmp_path)
    n.claim(B1, "10.0.0.1", [("fe80::1", 2)], advertised_by="")
    n.reconcile()
    assert n.overlay.unverified == 1 and n.pokes == ["ospf"]
    assert n.overlay.claims == {} and n.overlay.forged == {}
    assert n.kernel.v4 == {}  # not routed before it is verified
    n.claim(B1, "10.0.0.1", [("fe80::1", 2)])  # the next reading of the LSDB has it
    n.reconcile()
    assert n.overlay.unverified == 0 and set(n.kernel.v4) == {str(B1)}


def test_a_fresh_node_waits_to_learn_the_others_claims(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overlay_mod, "SETTLE", 60.0)
    n = Node(tmp_path)
    n.claim(B1, "10.0.0.1", [("fe80::1", 2)])
    assert n.reconcile() is False  # routes only just arrived: more may follow
    assert n.overlay.block is None and n.kernel.addrs == set()
    monkeypatch.setattr(overlay_mod, "ATTACHED_FOR", 0.0)
    assert n.reconcile() is True
    assert n.overlay.block not in (None, B1)


def test_a_remembered_block_is_taken_up_at_once(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overlay_mod, "SETTLE", 60.0)
    first = Node(tmp_path)
    state = first.cfg.paths.overlay_state
    state.parent.mkdir(parents=True)
    state.write_text('{"block": "10.244.7.0/24"}\n')
    n = Node(tmp_path, first.site)
    assert n.overlay.block == IPv4Network("10.244.7.0/24")
    n.reconcile()
    assert n.my_claim(IPv4Network("10.244.7.0/24")) in n.kernel.addrs
    for bad in ('{"block": "192.168.0.0/24"}', "{", '{"other": 1}'):
        state.write_text(bad)
        assert Node(tmp_path, first.site).overlay.block is None


def test_stale_addresses_on_lo_are_removed(tmp_path: Path) -> None:
    n = Node(tmp_path)
    n.kernel.addrs |= {n.my_claim(B3), (str(pods.node_address(B3)), 32), ("127.0.0.1", 8)}
    n.reconcile()
    mine = n.overlay.block
    assert mine is not None and mine != B3
    assert n.kernel.addrs == {n.my_claim(mine), (str(pods.node_address(mine)), 32),
                              ("127.0.0.1", 8)}  # not ours: left alone


def test_routes_follow_messages_without_reading_everything_again(tmp_path: Path) -> None:
    n = Node(tmp_path)
    k = n.kernel
    n.claim(B1, "10.0.0.1", [("fe80::1", 2)])
    n.reconcile()
    assert set(k.v4) == {str(B1)}
    k.reads.clear()
    # A new claim arrives, then the first one moves to other next hops.
    n.routes.message(n.claim(B2, "10.0.0.2", [("fe80::2", 3)]))
    n.routes.message(n.claim(B1, "10.0.0.1", [("fe80::2", 3), ("fe80::3", 4)]))
    n.reconcile()
    assert k.reads == []
    assert set(k.v4) == {str(B1), str(B2)}
    assert k.via(B1) == [("fe80::2", 3), ("fe80::3", 4)]
    n.routes.message(k.del_route(pods.claim_address(n.site.mesh.ula,
                                                    BlockClaim(B2, IPv4Address("10.0.0.2")))))
    n.reconcile()
    assert set(k.v4) == {str(B1)} and k.reads == []
    # A link event: the kernel drops that link's routes without a word; all is read again.
    assert n.routes.wants(link_msg()) and n.overlay.wants(link_msg())
    n.routes.message(link_msg())
    n.overlay.message(link_msg())
    n.reconcile()
    assert socket.AF_INET6 in k.reads and socket.AF_INET in k.reads


def test_routes_take_only_the_sites_unicast_host_routes(tmp_path: Path) -> None:
    n = Node(tmp_path)
    ula = n.site.mesh.ula
    inside = str(ula.network_address + 7)
    assert n.routes.wants(route_msg(inside, [("fe80::1", 2)]))
    assert not n.routes.wants(route_msg("fd99::7", [("fe80::1", 2)]))  # another site
    v4 = Msg(event="RTM_NEWROUTE", family=socket.AF_INET, dst_len=32,
             attrs=[("RTA_DST", "10.0.0.1")])
    assert not n.routes.wants(v4)
    assert not n.routes.wants(Msg(route_msg(inside, []), dst_len=64))
    assert not n.routes.wants(Msg(event="RTM_NEWADDR"))
    for r in (route_msg(str(ula.network_address + 8), [("fe80::1", 2)], proto=2),  # kernel's
              route_msg(str(ula.network_address + 9), [("fe80::1", 2)], table=255)):  # local
        n.routes.message(r)
    n.routes.message(route_msg(inside, [("fe80::1", 2), ("fe80::2", 3)]))
    assert n.routes.table == {IPv6Address(inside): (NextHop(IPv6Address("fe80::1"), 2),
                                                    NextHop(IPv6Address("fe80::2"), 3))}
    n.routes.message(Msg(route_msg(inside, []), event="RTM_DELROUTE"))
    assert n.routes.table == {}


def test_a_full_read_reports_a_change_only_when_the_table_changed(tmp_path: Path) -> None:
    n = Node(tmp_path)
    n.kernel.add_route(n.site.mesh.ula.network_address + 7, [("fe80::1", 2)])
    assert n.routes.reconcile() is True
    n.kernel.add_route(n.site.mesh.ula.network_address + 8, [("fe80::1", 2)])
    n.routes.full = True
    assert n.routes.reconcile() is True
    n.routes.full = True
    assert n.routes.reconcile() is False


def test_a_route_message_is_a_change_for_the_controllers_after_routes(tmp_path: Path) -> None:
    n = Node(tmp_path)
    n.routes.reconcile()
    assert n.routes.reconcile() is False
    n.routes.message(n.kernel.add_route(n.site.mesh.ula.network_address + 7, [("fe80::1", 2)]))
    assert n.routes.reconcile() is True  # the overlay, after it, runs on this pass
    assert n.routes.reconcile() is False


def test_a_fresh_node_does_not_take_a_block_claimed_but_not_yet_verified(tmp_path: Path) -> None:
    n = Node(tmp_path)
    first = next(pods.candidates(n.cfg.node.node_id, n.site.pods))
    n.claim(first, "10.0.0.9", [("fe80::1", 2)], advertised_by="")  # held, not yet in the view
    n.reconcile()
    assert n.overlay.block != first
