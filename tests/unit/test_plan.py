"""The address plan: derived, stable, inside the site, distinct."""

from __future__ import annotations

from ipaddress import IPv6Network

import pytest

from mesh import plan
from mesh.plan import HardwareIdentity

ULA = IPv6Network("fd12:3456:789a::/48")


def test_dmi_uuid_preferred_and_normalised() -> None:
    raw = " 4C4C4544-0042-3510-8052-B2C04F4B4E32\n"
    ident = HardwareIdentity.choose(raw, ["52:54:00:00:00:01"])
    assert ident == HardwareIdentity("dmi", "4c4c4544-0042-3510-8052-b2c04f4b4e32")


@pytest.mark.parametrize("uuid", [None, "", "garbage", "00000000-0000-0000-0000-000000000000",
                                  "03000200-0400-0500-0006-000700080009",
                                  "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"])
def test_bogus_uuid_falls_back_to_lowest_mac(uuid: str | None) -> None:
    ident = HardwareIdentity.choose(uuid, ["52:54:00:00:00:09", "52:54:00:00:00:02",
                                           "00:00:00:00:00:00"])
    assert ident == HardwareIdentity("mac", "52:54:00:00:00:02")


def test_no_identity_is_an_error() -> None:
    with pytest.raises(ValueError, match="no hardware identity"):
        HardwareIdentity.choose(None, [])


def test_derivation_is_stable_and_inside_the_site() -> None:
    ident = HardwareIdentity("mac", "52:54:00:12:34:56")
    a, b = plan.derive(ident, ULA), plan.derive(ident, ULA)
    assert a == b
    assert a.loopback in plan.loopback_subnet(ULA)
    assert a.loopback in ULA
    assert a.hostname == f"km-{a.node_id[:12]}"
    assert len(a.node_id) == 16
    assert int(a.router_id) not in (0, 0xFFFFFFFF)
    # the loopback's interface id is the node id
    assert int(a.loopback) & ((1 << 64) - 1) == int(a.node_id, 16)


def test_same_node_other_site_keeps_id_changes_prefix() -> None:
    ident = HardwareIdentity("dmi", "4c4c4544-0042-3510-8052-b2c04f4b4e32")
    other = IPv6Network("fdaa:bbbb:cccc::/48")
    a, b = plan.derive(ident, ULA), plan.derive(ident, other)
    assert a.node_id == b.node_id and a.router_id == b.router_id
    assert a.loopback != b.loopback and b.loopback in other


def test_thousand_nodes_are_distinct() -> None:
    nodes = [plan.derive(HardwareIdentity("mac", f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}"), ULA)
             for i in range(1000)]
    assert len({n.loopback for n in nodes}) == 1000
    assert len({n.router_id for n in nodes}) == 1000
    assert len({n.hostname for n in nodes}) == 1000


def test_subnets() -> None:
    assert plan.loopback_subnet(ULA) == IPv6Network("fd12:3456:789a::/64")
    assert plan.anycast_subnet(ULA) == IPv6Network("fd12:3456:789a:1::/64")
    with pytest.raises(ValueError):
        plan.subnet(IPv6Network("fd00::/64"), 1)


def test_provisioning_prefixes_are_per_link_and_apart_from_routed_subnets() -> None:
    ula = IPv6Network("fd12:3456:789a::/48")
    rng = plan.provisioning_range(ula)
    assert rng == IPv6Network("fd12:3456:789a:8000::/49")
    routed = [plan.loopback_subnet(ula), plan.anycast_subnet(ula),
              plan.subnet(ula, plan.POD_BLOCK_SUBNET)]
    seen = set()
    for i in range(200):
        node_id = f"{i:016x}"
        for link in ("enp1s0", "enp2s0"):
            p = plan.provisioning_prefix(ula, node_id, link)
            assert p.prefixlen == 64 and p.subnet_of(rng)
            assert not any(p.overlaps(r) for r in routed)
            assert p == plan.provisioning_prefix(ula, node_id, link)  # derived, stable
            seen.add(p)
    assert len(seen) > 390  # spread: collisions are harmless, but rare
