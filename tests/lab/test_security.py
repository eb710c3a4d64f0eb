"""A stranger on a mesh port gets nothing, and a member cannot evict others' pod
blocks: the node runtime's packet filter and claim check, with real FRR, real
nftables and real pods, in the lab."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address

import pytest

from lab.netns import Lab, run
from lab.stack import add_pod, claimed_blocks
from mesh import pods
from mesh.pods import BlockClaim
from tests.lab.conftest import LabFactory
from tests.lab.test_mesh import wait_for

pytestmark = pytest.mark.lab

# Counts what reaches a node (or a pod) whatever its own filter then does: a table
# of the test's own, hooked before the runtime's.
PROBE = """table inet probe {
    chain input {
        type filter hook input priority -10; policy accept;
        icmpv6 type echo-request counter
        icmp type echo-request counter
    }
}
"""


def status(lab: Lab, n: int) -> dict[str, object]:
    data: dict[str, object] = json.loads(lab.status_file(n).read_text())
    return data


def probe_count(ns: str) -> int:
    """echo-requests counted by PROBE in namespace `ns`."""
    out = run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "probe"]).stdout
    return sum(x["rule"]["expr"][-1]["counter"]["packets"] for x in json.loads(out)["nftables"]
               if "rule" in x)


def test_a_rogue_on_a_mesh_port_gets_nothing(make_lab: LabFactory) -> None:
    # n1 - n2 - n3, etcd behind its anycast address on n3, a pod on n3.
    lab = make_lab("line:3", agent=True, services={"etcd": [3]})
    wait_for("every node at stage overlay", lambda: all(
        status(lab, n)["stage"] in ("overlay", "anycast", "kubelet") for n in (1, 2, 3)),
        timeout=60)
    etcd = lab.site.anycast["etcd"]
    wait_for("n1 to route to the etcd anycast address", lambda: any(
        a["service"] == "etcd" and a["state"] == "routed"
        for a in status(lab, 1)["anycast"]), timeout=60)  # type: ignore[attr-defined]
    pod = add_pod(lab, 3, "web")
    pod_ns = f"{lab.prefix}n3-web"
    n1, n3 = lab.node(1), lab.node(3)
    for ns in (n1.namespace, n3.namespace, pod_ns):
        run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=PROBE)

    # A laptop plugged into a free port of n1: no key, no FRR, its own routes to
    # everything, pointed at n1.
    rogue = f"{lab.prefix}rogue"  # under the lab's prefix: down() removes it
    run(["ip", "netns", "add", rogue])
    run(["ip", "link", "add", "name", "mr", "netns", n1.namespace, "type", "veth",
         "peer", "name", "r1", "netns", rogue])
    run(["ip", "-n", rogue, "link", "set", "r1", "up"])
    run(["ip", "-n", n1.namespace, "link", "set", "mr", "up"])
    wait_for("n1's runtime to take the new port as a mesh link", lambda: "mr" in {
        link["name"] for link in status(lab, 1)["links"]}, timeout=30)  # type: ignore[attr-defined]
    gateway = ""
    deadline = time.monotonic() + 10
    while not gateway and time.monotonic() < deadline:
        out = run(["ip", "-n", n1.namespace, "-6", "-j", "addr", "show", "dev", "mr",
                   "scope", "link"]).stdout
        gateway = next((a["local"] for x in json.loads(out) for a in x["addr_info"]
                        if not a.get("tentative")), "")
        time.sleep(0.2)
    assert gateway, "n1's port has no link-local address"
    ula, pod_range = lab.site.mesh.ula, lab.site.pods.range
    run(["ip", "-n", rogue, "-6", "route", "add", str(ula), "via", gateway, "dev", "r1"])
    run(["ip", "-n", rogue, "route", "add", str(pod_range), "via", "inet6", gateway, "dev", "r1"])

    # It gets no adjacency, hence no route, and n1 forwards nothing from it.
    time.sleep(2 * lab.site.mesh.dead_interval)
    st = status(lab, 1)
    assert {link["name"]: link["state"] for link in st["links"]}["mr"] != "Full"  # type: ignore[attr-defined]
    rules = run(["ip", "netns", "exec", n1.namespace, "nft", "list", "set", "inet",
                 "kubermesh", "full_links"]).stdout
    assert '"mr"' not in rules and '"m2"' in rules, rules
    learned = run(["ip", "-n", rogue, "-6", "route", "show", "proto", "ospf"]).stdout
    assert learned.strip() == ""

    def ping(target: str) -> bool:
        return run(["ip", "netns", "exec", rogue, "ping", "-n", "-q", "-c", "2", "-i", "0.2",
                    "-W", "1", target], check=False).returncode == 0

    before = {ns: probe_count(ns) for ns in (n1.namespace, n3.namespace, pod_ns)}
    targets = {"n1's loopback": n1.loopback, "n3's loopback": n3.loopback,
               "the etcd anycast address": str(etcd), "a pod on n3": str(pod.ip)}
    answered = [what for what, addr in targets.items() if ping(addr)]
    assert answered == [], f"the rogue reached {answered}"
    after = {ns: probe_count(ns) for ns in before}
    # Dropped at the first node: nothing arrived at n3 or its pod.
    assert after[n3.namespace] == before[n3.namespace]
    assert after[pod_ns] == before[pod_ns]
    # Members still reach all of it through the same node.
    assert lab.ping(2, 3) and lab.ping(1, 3)

    # The control: without n1's filter the same packets go through, so the
    # checks above could have failed.
    run(["ip", "netns", "exec", n1.namespace, "nft", "delete", "table", "inet", "kubermesh"])
    assert ping(n1.loopback)
    ping(n3.loopback)  # n3 cannot answer (no route back), but it is reached
    assert probe_count(n3.namespace) > after[n3.namespace]


def test_a_forged_claim_evicts_nothing(make_lab: LabFactory) -> None:
    """n2 announces a claim on n3's block embedding a router-id lower than n3's
    (as a bug or someone holding the key could): n3 keeps its block, every node
    keeps routing it to n3, and the forged claim is reported."""
    lab = make_lab("line:3", agent=True)
    wait_for("every node to hold a pod block", lambda: all(
        len(claimed_blocks(lab, n)) == 1 for n in (1, 2, 3)), timeout=60)
    block = claimed_blocks(lab, 3)[0]
    n3_id = IPv4Address(lab.node(3).router_id)
    lower = IPv4Address(1)
    assert lower < n3_id
    forged = pods.claim_address(lab.site.mesh.ula, BlockClaim(block, lower))
    run(["ip", "-n", lab.node(2).namespace, "addr", "add", f"{forged}/128", "dev", "lo"])
    wait_for("n1 to report the forged claim", lambda: str(forged) in status(lab, 1).get(
        "forged_claims", ()), timeout=30)  # type: ignore[operator]
    end = time.monotonic() + 10
    while time.monotonic() < end:
        assert claimed_blocks(lab, 3) == [block]
        v4 = run(["ip", "-n", lab.node(1).namespace, "-4", "-j", "route", "show",
                  str(block), "proto", "77"]).stdout
        assert json.loads(v4), f"n1 no longer routes {block}"
        time.sleep(1)
    assert lab.ping(1, 3)
    # Without the check, n3 would have yielded: the forged owner is lower than n3's.
    assert pods.choose_block(lab.node(3).node_id, n3_id, lab.site.pods,
                             [BlockClaim(block, lower)], block) != block
