"""The overlay agent's reconcile pass against a kernel stand-in: what it installs,
removes, and how one failing object is reported and retried without holding up
the others. (The lab tests run it against the real kernel and FRR.)"""

from __future__ import annotations

import socket
import tomllib
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from firstboot.overlay import RTPROT_KUBERMESH, Config, Overlay
from mesh import pods
from mesh.pods import BlockClaim
from mesh.site import Site, new_site_toml, parse_site

ME = IPv4Address("10.0.0.5")


class Kernel:
    """Just enough of pyroute2's IPRoute: routes and lo's addresses as netlink-like dicts."""

    def __init__(self) -> None:
        self.v6: list[dict[str, Any]] = []
        self.v4: dict[str, dict[str, Any]] = {}
        self.addrs: set[tuple[str, int]] = set()
        self.fail_next: set[str] = set()  # route dsts whose next change fails once

    def claim_route(self, site: Site, claim: BlockClaim, hops: list[tuple[str, int]]) -> None:
        dst = str(pods.claim_address(site.mesh.ula, claim))
        self.v6.append({"type": 1, "dst_len": 128, "proto": 188, "attrs": [
            ("RTA_DST", dst),
            ("RTA_MULTIPATH", [{"oif": oif, "attrs": [("RTA_GATEWAY", gw)]}
                               for gw, oif in hops])]})

    def get_routes(self, family: int, table: int, proto: int | None = None) -> list[Any]:
        if family == socket.AF_INET6:
            return self.v6
        return list(self.v4.values())

    def route(self, verb: str, dst: str, **kw: Any) -> None:
        if dst in self.fail_next:
            self.fail_next.discard(dst)
            raise OSError(22, "Invalid argument")
        if verb == "del":
            del self.v4[dst]
            return
        net = IPv4Network(dst)
        self.v4[dst] = {"type": 1, "dst_len": net.prefixlen, "proto": kw["proto"], "attrs": [
            ("RTA_DST", str(net.network_address)),
            ("RTA_MULTIPATH", [{"oif": h["oif"], "attrs": [("RTA_VIA", h["via"])]}
                               for h in kw["multipath"]])]}

    def link_lookup(self, ifname: str) -> list[int]:
        return [1]

    def get_addr(self, index: int) -> list[Any]:
        return [{"prefixlen": p, "attrs": [("IFA_ADDRESS", a)]} for a, p in self.addrs]

    def addr(self, verb: str, index: int, address: str, prefixlen: int) -> None:
        (self.addrs.add if verb == "add" else self.addrs.discard)((address, prefixlen))


@pytest.fixture
def site() -> Site:
    return parse_site(tomllib.loads(new_site_toml("s")))


def agent(site: Site, tmp_path: Path, kernel: Kernel) -> Overlay:
    cfg = Config(site, "00112233aabbccdd", ME, tmp_path / "overlay.json", tmp_path / "cni",
                 tmp_path / "cni-data", settle=0)
    return Overlay(cfg, kernel)


def via(route: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((h["attrs"][0][1]["addr"], h["oif"]) for h in dict(route["attrs"])
                  ["RTA_MULTIPATH"])


def test_routes_each_block_with_its_claims_next_hops(site: Site, tmp_path: Path) -> None:
    k = Kernel()
    b1, b2 = IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")
    k.claim_route(site, BlockClaim(b1, IPv4Address("10.0.0.1")), [("fe80::1", 2), ("fe80::2", 3)])
    k.claim_route(site, BlockClaim(b2, IPv4Address("10.0.0.9")), [("fe80::2", 3)])
    a = agent(site, tmp_path, k)
    a.reconcile()
    assert a.failures == set() and a.ready
    assert set(k.v4) == {str(b1), str(b2)}
    assert via(k.v4[str(b1)]) == [("fe80::1", 2), ("fe80::2", 3)]
    assert all(r["proto"] == RTPROT_KUBERMESH for r in k.v4.values())
    assert a.block not in (b1, b2)
    assert a.block is not None
    assert (str(pods.node_address(a.block)), 32) in k.addrs
    assert (str(pods.claim_address(site.mesh.ula, BlockClaim(a.block, ME))), 128) in k.addrs
    assert (tmp_path / "cni" / "10-kubermesh.conflist").exists()
    # The claim goes: so does its IPv4 route.
    k.v6.pop()
    a.reconcile()
    assert set(k.v4) == {str(b1)}


def test_a_failing_route_is_retried_and_does_not_block_the_others(site: Site,
                                                                  tmp_path: Path) -> None:
    k = Kernel()
    blocks = [IPv4Network(f"10.244.{i}.0/24") for i in (1, 2, 3)]
    for i, b in enumerate(blocks):
        k.claim_route(site, BlockClaim(b, IPv4Address(f"10.0.1.{i + 1}")), [("fe80::1", 2)])
    k.fail_next.add(str(blocks[1]))
    a = agent(site, tmp_path, k)
    a.reconcile()
    assert set(k.v4) == {str(blocks[0]), str(blocks[2])}
    assert len(a.failures) == 1 and str(blocks[1]) in next(iter(a.failures))
    assert not a.ready  # not ready while something is missing
    a.reconcile()  # the retry
    assert set(k.v4) == {str(b) for b in blocks}
    assert a.failures == set() and a.ready


def test_yields_to_a_lower_router_id_and_cleans_up(site: Site, tmp_path: Path) -> None:
    k = Kernel()
    a = agent(site, tmp_path, k)
    a.reconcile()
    mine = a.block
    assert mine is not None
    k.claim_route(site, BlockClaim(mine, IPv4Address("10.0.0.1")), [("fe80::1", 2)])
    a.reconcile()
    assert a.block != mine
    assert a.block is not None
    old_claim = str(pods.claim_address(site.mesh.ula, BlockClaim(mine, ME)))
    assert (old_claim, 128) not in k.addrs
    assert (str(pods.node_address(mine)), 32) not in k.addrs
    assert str(mine) in k.v4  # now routed to its keeper
    assert str(a.block) in (tmp_path / "overlay.json").read_text()


def test_route_messages_are_applied_without_reading_everything_again(site: Site,
                                                                    tmp_path: Path) -> None:
    k = Kernel()
    b1, b2 = IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")
    k.claim_route(site, BlockClaim(b1, IPv4Address("10.0.0.1")), [("fe80::1", 2)])
    a = agent(site, tmp_path, k)
    a.reconcile()
    assert set(k.v4) == {str(b1)}
    reads: list[dict[str, Any]] = []

    def no_reads(*args: Any, **kw: Any) -> list[Any]:
        reads.append(kw)
        return []

    k.get_routes = no_reads  # type: ignore[method-assign]
    # A new claim arrives, then the first one moves to other next hops.
    k.claim_route(site, BlockClaim(b2, IPv4Address("10.0.0.2")), [("fe80::2", 3)])
    a.learn(k.v6[-1], "RTM_NEWROUTE")
    moved = dict(k.v6[0], attrs=[k.v6[0]["attrs"][0], ("RTA_MULTIPATH", [
        {"oif": 3, "attrs": [("RTA_GATEWAY", "fe80::2")]}])])
    a.learn(moved, "RTM_NEWROUTE")
    a.reconcile(full=False)
    assert reads == []
    assert set(k.v4) == {str(b1), str(b2)}
    assert via(k.v4[str(b1)]) == [("fe80::2", 3)]
    a.learn(k.v6[-1], "RTM_DELROUTE")
    a.reconcile(full=False)
    assert set(k.v4) == {str(b1)} and reads == []
