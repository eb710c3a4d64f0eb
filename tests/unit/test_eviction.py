"""A node the mesh has lost, and how it is marked unreachable."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address

from mesh import eviction, plan

A, B = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
LOOPS = {A: IPv6Address("fd00:1::aaaa:aaaa:aaaa:aaaa"),
         B: IPv6Address("fd00:1::bbbb:bbbb:bbbb:bbbb")}
NOW = datetime(2026, 11, 24, 23, 0, 0, tzinfo=UTC)


def test_only_routers_gone_from_the_spf_tree_are_lost() -> None:
    assert eviction.lost_nodes(["10.0.0.2"], LOOPS) == {plan.hostname_of(LOOPS[B]): "10.0.0.2"}
    assert eviction.lost_nodes([], LOOPS) == {}
    assert eviction.lost_nodes(["10.9.9.9"], LOOPS) == {}  # no loopback known: not ours


def test_the_taint_and_the_ready_condition() -> None:
    node = {"spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "MemoryPressure", "status": "False"}]}}
    assert not eviction.is_marked(node)
    taints = eviction.taint_patch(node, NOW)["spec"]["taints"]
    assert taints == [{"key": "dedicated", "effect": "NoSchedule"},
                      {"key": eviction.UNREACHABLE, "effect": "NoExecute",
                       "timeAdded": "2026-11-24T23:00:00Z"}]
    assert eviction.is_marked({"spec": {"taints": taints}})
    conds = eviction.ready_unknown(node, "10.0.0.2", NOW)["status"]["conditions"]
    assert {c["type"]: c["status"] for c in conds} == {"Ready": "Unknown",
                                                      "MemoryPressure": "False"}
    [ready] = [c for c in conds if c["type"] == "Ready"]
    assert ready["reason"] == eviction.REASON and "10.0.0.2" in ready["message"]
