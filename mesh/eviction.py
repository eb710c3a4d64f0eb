"""Mesh-fast self-healing: a node the whole mesh has lost is unreachable at once.

OSPFv3 knows within a BFD interval or so that a router is gone from every SPF
tree (its LSAs stay in the database, unreachable, until they age out).
Kubernetes by default waits for the kubelet's missed heartbeats (40 s) and then
for pods' tolerations of an unreachable node (300 s). Here a control-plane
holder marks a node whose router its mesh no longer reaches as unreachable
itself: its Ready condition Unknown and the `unreachable` NoExecute taint, as
the node lifecycle controller would set them, and pods tolerate that only
TOLERATION_SECONDS (the apiserver's default tolerations). A node that one link
lost is still reached another way: only losing it from the SPF tree counts.
A node that comes back posts Ready itself, and the node lifecycle controller
takes the taint away, as for any node.

Only a holder whose apiserver writes to an etcd with quorum changes anything:
on the side of a split without quorum every write fails, so nothing is evicted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from mesh import plan

UNREACHABLE = "node.kubernetes.io/unreachable"
TOLERATION_SECONDS = 2
REASON = "KubermeshMeshLost"


def lost_nodes(unreachable: Iterable[str],
               loopbacks: Mapping[IPv4Address, IPv6Address]) -> dict[str, str]:
    """Hostname -> router-id of every node whose router the SPF tree no longer reaches."""
    gone = {IPv4Address(r) for r in unreachable}
    return {plan.hostname_of(lo): str(r) for r, lo in loopbacks.items() if r in gone}


def is_marked(node: Mapping[str, Any]) -> bool:
    """Whether a Node (as the API returns it, camelCase) is already marked lost."""
    taints = node.get("spec", {}).get("taints") or []
    return any(t.get("key") == UNREACHABLE and t.get("effect") == "NoExecute" for t in taints)


def taint_patch(node: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The Node's spec with the unreachable NoExecute taint added (a merge patch)."""
    taints = [t for t in node.get("spec", {}).get("taints") or []
              if not (t.get("key") == UNREACHABLE and t.get("effect") == "NoExecute")]
    taints.append({"key": UNREACHABLE, "effect": "NoExecute",
                   "timeAdded": now.strftime("%Y-%m-%dT%H:%M:%SZ")})
    return {"spec": {"taints": taints}}


def ready_unknown(node: Mapping[str, Any], router: str, now: datetime) -> dict[str, Any]:
    """The Node's status conditions with Ready Unknown (a merge patch of status)."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [c for c in node.get("status", {}).get("conditions") or []
                  if c.get("type") != "Ready"]
    conditions.append({"type": "Ready", "status": "Unknown", "reason": REASON,
                       "message": f"router {router} is gone from the mesh's SPF tree",
                       "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
    return {"status": {"conditions": conditions}}
