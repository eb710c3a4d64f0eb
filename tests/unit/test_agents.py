"""The agents' pure parts: route next hops, desired IPv4 routes, CNI config, health."""

from __future__ import annotations

import socket
import tomllib
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from firstboot.anycast import Hysteresis, Probe, parse_services
from firstboot.overlay import NextHop, cni_config, desired_routes, route_hops
from mesh import pods
from mesh.pods import BlockClaim
from mesh.site import new_site_toml, parse_site

ULA = IPv6Network("fd12:3456:789a::/48")
GW1, GW2 = "fe80::1", "fe80::2"


def msg(attrs: list[tuple[str, Any]], oif: int | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"attrs": attrs}
    if oif is not None:
        m["oif"] = oif
    return m


def test_route_hops_single_multipath_and_via_inet6() -> None:
    single = msg([("RTA_GATEWAY", GW1), ("RTA_OIF", 3)])
    assert route_hops(single) == (NextHop(IPv6Address(GW1), 3),)
    multi = msg([("RTA_MULTIPATH", [msg([("RTA_GATEWAY", GW2)], oif=4),
                                    msg([("RTA_GATEWAY", GW1)], oif=3)])])
    assert route_hops(multi) == (NextHop(IPv6Address(GW1), 3), NextHop(IPv6Address(GW2), 4))
    via = msg([("RTA_MULTIPATH", [msg([("RTA_VIA", {"family": socket.AF_INET6,
                                                     "addr": GW2})], oif=4)])])
    assert route_hops(via) == (NextHop(IPv6Address(GW2), 4),)
    assert route_hops(msg([("RTA_OIF", 3)])) == ()  # a connected route: no gateway


def test_desired_routes_follow_the_keepers_claim_and_skip_unrouted_ones() -> None:
    b1, b2 = IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")
    keeper = BlockClaim(b1, IPv4Address("10.0.0.1"))
    loser = BlockClaim(b1, IPv4Address("10.0.0.9"))
    other = BlockClaim(b2, IPv4Address("10.0.0.5"))
    claims = {pods.claim_address(ULA, c): c for c in (keeper, loser, other)}
    h1 = (NextHop(IPv6Address(GW1), 3), NextHop(IPv6Address(GW2), 4))
    h2 = (NextHop(IPv6Address(GW2), 4),)
    hops = {pods.claim_address(ULA, keeper): h1, pods.claim_address(ULA, loser): h2,
            pods.claim_address(ULA, other): ()}
    assert desired_routes(claims, hops, mine=None) == {b1: h1}


def test_cni_config_is_a_bridge_on_the_block_with_the_node_as_gateway() -> None:
    conf = cni_config(IPv4Network("10.244.3.0/24"), Path("/var/lib/cni/networks"))
    assert conf["cniVersion"] == "1.0.0"
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["isGateway"] and not bridge["ipMasq"]
    assert bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1",
                                          "rangeStart": "10.244.3.2"}]]


def test_hysteresis_rises_and_falls_only_after_runs() -> None:
    h = Hysteresis(rise=2, fall=3)
    assert [h.update(ok) for ok in [True, False, True, True]] == [False, False, False, True]
    assert [h.update(ok) for ok in [False, False, True, False, False, False]] == [
        True, True, True, True, True, False]
    with pytest.raises(ValueError):
        Hysteresis(0, 1)


def test_probe_urls() -> None:
    assert Probe.parse("http://[fd00::1]:2379/health") == Probe("http", "fd00::1", 2379,
                                                                "/health")
    assert Probe.parse("https://[fd00::1]/healthz").port == 443
    assert str(Probe.parse("tcp://[fd00::1]:6443")) == "tcp://[fd00::1]:6443"
    for bad in ("ftp://x:1", "tcp://[fd00::1]", "http://"):
        with pytest.raises(ValueError):
            Probe.parse(bad)


def test_services_must_be_the_sites() -> None:
    site = parse_site(tomllib.loads(new_site_toml("s")))
    (svc,) = parse_services(site, ["etcd=http://[fd00::1]:2379/health"])
    assert svc.address == site.anycast["etcd"]
    with pytest.raises(ValueError, match="no anycast address for it"):
        parse_services(site, ["dns=tcp://[fd00::1]:53"])
    with pytest.raises(ValueError, match="NAME=URL"):
        parse_services(site, ["etcd"])
