"""Pod blocks: candidates, the IPv6 claim that embeds a block, collisions."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from mesh import plan, pods
from mesh.pods import BlockClaim
from mesh.site import PodSettings

ULA = IPv6Network("fd12:3456:789a::/48")
PODS = PodSettings(IPv4Network("10.244.0.0/14"), 24)
SMALL = PodSettings(IPv4Network("10.8.0.0/22"), 24)  # 4 blocks


def test_blocks_cover_the_range_in_order() -> None:
    assert pods.block_at(PODS, 0) == IPv4Network("10.244.0.0/24")
    assert pods.block_at(PODS, 1023) == IPv4Network("10.247.255.0/24")
    assert pods.block_index(PODS, IPv4Network("10.245.3.0/24")) == 259
    with pytest.raises(ValueError):
        pods.block_at(PODS, 1024)
    with pytest.raises(ValueError, match="not a /24 block"):
        pods.block_index(PODS, IPv4Network("10.1.0.0/24"))


def test_candidates_are_a_stable_permutation_of_every_block() -> None:
    a = list(pods.candidates("0123456789abcdef", PODS))
    assert a == list(pods.candidates("0123456789abcdef", PODS))
    assert sorted(a) == [pods.block_at(PODS, i) for i in range(PODS.blocks)]
    b = list(pods.candidates("fedcba9876543210", PODS))
    assert a[0] != b[0] or a[1] != b[1]  # another node walks another sequence


def test_first_candidates_spread_over_the_range() -> None:
    firsts = {next(pods.candidates(f"{i:016x}", PODS)) for i in range(200)}
    assert len(firsts) > 150  # a hash, not a counter: few first-choice collisions


def test_claim_round_trip_and_layout() -> None:
    claim = BlockClaim(IPv4Network("10.244.3.0/24"), IPv4Address("192.0.2.7"))
    addr = pods.claim_address(ULA, claim)
    assert addr == IPv6Address("fd12:3456:789a:2:af4:300:c000:207")
    assert addr in plan.subnet(ULA, plan.POD_BLOCK_SUBNET)
    assert pods.parse_claim(ULA, PODS, addr) == claim


@pytest.mark.parametrize("addr", [
    "fd12:3456:789a:0:af4:300:c000:207",  # loopback subnet, not pod blocks
    "fd12:3456:789a:1:af4:300:c000:207",  # anycast subnet
    "fd12:3456:789a:2:af4:301:c000:207",  # block not aligned to /24
    "fd12:3456:789a:2:a01:300:c000:207",  # 10.1.3.0: outside the pod range
    "fd12:3456:789a:2:af4:300:0:0",  # router-id 0.0.0.0
    "fd99:3456:789a:2:af4:300:c000:207",  # another site
])
def test_foreign_or_malformed_claims_are_ignored(addr: str) -> None:
    assert pods.parse_claim(ULA, PODS, IPv6Address(addr)) is None


RID = IPv4Address("10.0.0.5")
LOWER, HIGHER = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.9")


def test_fresh_node_takes_its_first_free_candidate() -> None:
    first, second = itertools.islice(pods.candidates("aa", PODS), 2)
    assert pods.choose_block("aa", RID, PODS, [], None) == first
    taken = [BlockClaim(first, HIGHER)]  # held already, even by a higher router-id
    assert pods.choose_block("aa", RID, PODS, taken, None) == second


def test_lower_router_id_keeps_a_contested_block() -> None:
    first, second = itertools.islice(pods.candidates("aa", PODS), 2)
    assert pods.choose_block("aa", RID, PODS, [BlockClaim(first, HIGHER)], first) == first
    assert pods.choose_block("aa", RID, PODS, [BlockClaim(first, LOWER)], first) == second


def test_remembered_block_is_kept_when_nobody_took_it() -> None:
    old = IPv4Network("10.246.9.0/24")
    others = [BlockClaim(IPv4Network("10.244.0.0/24"), LOWER)]
    assert pods.choose_block("aa", RID, PODS, others, old) == old


def test_own_claims_do_not_count_as_rivals() -> None:
    first = next(pods.candidates("aa", PODS))
    assert pods.choose_block("aa", RID, PODS, [BlockClaim(first, RID)], first) == first


def test_full_range_is_an_error() -> None:
    others = [BlockClaim(pods.block_at(SMALL, i), LOWER) for i in range(SMALL.blocks)]
    with pytest.raises(ValueError, match="every one of the 4 pod blocks"):
        pods.choose_block("aa", RID, SMALL, others, None)


def test_contested_block_routes_to_its_keeper_and_own_block_is_never_routed() -> None:
    b1, b2 = IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")
    claims = {pods.claim_address(ULA, c): c for c in [
        BlockClaim(b1, HIGHER), BlockClaim(b1, LOWER), BlockClaim(b2, HIGHER)]}
    routes = pods.routes_by_block(claims, mine=None)
    assert routes == {b1: pods.claim_address(ULA, BlockClaim(b1, LOWER)),
                      b2: pods.claim_address(ULA, BlockClaim(b2, HIGHER))}
    assert set(pods.routes_by_block(claims, mine=b2)) == {b1}


def test_node_address_is_the_first_host_of_the_block() -> None:
    assert pods.node_address(IPv4Network("10.244.3.0/24")) == IPv4Address("10.244.3.1")
