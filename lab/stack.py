"""The node stack in the lab, above FRR and the node runtime: a real etcd cluster
behind its anycast address, and pods attached by the real CNI plugins. Used by
the lab tests and the benchmarks; everything runs inside the lab's namespaces and
goes with `Lab.down`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address
from pathlib import Path
from typing import Any

from lab.netns import Lab, LabError, LabNode, run
from mesh import cni, pods
from mesh.topology import Topology

CNI_BIN = Path("/usr/lib/cni")
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


def _url(addr: IPv6Address | str, port: int, path: str = "") -> str:
    return f"http://[{addr}]:{port}{path}"


# --- overlay


def remembered_block(lab: Lab, ref: str | int) -> IPv4Network | None:
    """The block the node's overlay agent holds (its state file)."""
    try:
        data = json.loads((lab.node_dir(lab.node(ref)) / "overlay.json").read_text())
        return IPv4Network(data["block"])
    except (OSError, ValueError, KeyError):
        return None


def claimed_blocks(lab: Lab, ref: str | int) -> list[IPv4Network]:
    """Blocks the node announces right now: the claim /128s on its lo."""
    n = lab.node(ref)
    out = run(["ip", "-n", n.namespace, "-6", "-j", "addr", "show", "dev", "lo"]).stdout
    claims = []
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            claim = pods.parse_claim(lab.site.mesh.ula, lab.site.pods, IPv6Address(a["local"]))
            if claim is not None:
                claims.append(claim.block)
    return claims


@dataclass(frozen=True)
class Route:
    dst: str
    hops: tuple[tuple[str, str], ...]  # (gateway, dev), sorted


def kernel_routes(lab: Lab, ref: str | int, family: str,
                  proto: str | None = None) -> dict[str, Route]:
    """`ip -j route` of the node's main table as dst -> next hops."""
    n = lab.node(ref)
    argv = ["ip", "-n", n.namespace, f"-{family}", "-j", "route", "show", "table", "main"]
    if proto is not None:
        argv += ["proto", proto]
    out = run(argv).stdout
    routes = {}
    for r in json.loads(out or "[]"):
        hops = r.get("nexthops") or [r]
        pairs = []
        for h in hops:
            gw = h.get("gateway") or (h.get("via") or {}).get("host", "")
            pairs.append((gw, h.get("dev", "")))
        dst = r["dst"]
        if family == "6" and "/" not in dst:
            dst += "/128"
        routes[dst] = Route(dst, tuple(sorted(pairs)))
    return routes


def ipv4_on_links(lab: Lab, ref: str | int) -> list[str]:
    """IPv4 addresses on the node's mesh links (there should be none)."""
    n = lab.node(ref)
    out = run(["ip", "-n", n.namespace, "-4", "-j", "addr", "show"]).stdout
    return [f"{link['ifname']}: {a['local']}" for link in json.loads(out or "[]")
            if link["ifname"] in n.links for a in link.get("addr_info", [])]


# --- pods through the real CNI plugins


def add_pod(lab: Lab, ref: str | int, name: str) -> IPv4Interface:
    """A pod: its own network namespace, attached by the bridge + host-local plugins
    with the CNI configuration the node's overlay agent wrote. Returns its address."""
    n = lab.node(ref)
    conflist = json.loads((lab.node_dir(n) / "cni" / "net.d" / cni.CNI_FILE).read_text())
    pod_ns = f"{lab.prefix}{n.name}-{name}"  # under the lab's prefix: down() removes it
    run(["ip", "netns", "add", pod_ns])
    result = _cni(n, "ADD", pod_ns, conflist)
    return IPv4Interface(result["ips"][0]["address"])


def _cni(n: LabNode, command: str, pod_ns: str, conflist: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for plugin in conflist["plugins"]:
        conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": pod_ns,
               "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
               "CNI_PATH": str(CNI_BIN), "PATH": os.environ["PATH"]}
        proc = run(["ip", "netns", "exec", n.namespace, "env", "-i",
                    *[f"{k}={v}" for k, v in env.items()], str(CNI_BIN / plugin["type"])],
                   input=json.dumps(conf), check=False)
        if proc.returncode != 0:
            raise LabError(f"CNI {plugin['type']} {command} in {n.name} failed: "
                           f"{proc.stdout.strip()} {proc.stderr.strip()}")
        result = json.loads(proc.stdout or "{}")
    return result


def pod_exec(lab: Lab, ref: str | int, name: str, argv: list[str],
             timeout: float = 30) -> Any:
    n = lab.node(ref)
    return run(["ip", "netns", "exec", f"{lab.prefix}{n.name}-{name}", *argv],
               timeout=timeout, check=False)


# --- etcd behind its anycast address


def start_etcd_cluster(lab: Lab, members: list[int]) -> None:
    """etcd (Debian etcd-server) on `members`: peers on their loopbacks, clients on
    the loopback and on the etcd anycast address. The anycast address may not be
    on lo yet (the anycast agent adds it when etcd is healthy): non-local bind."""
    anycast = lab.site.anycast["etcd"]
    cluster = ",".join(f"n{m}={_url(lab.node(m).loopback, ETCD_PEER_PORT)}" for m in members)
    for m in members:
        n = lab.node(m)
        lab.exec(m, ["sysctl", "-q", "-w", "net.ipv6.ip_nonlocal_bind=1"])
        lab.spawn(m, [
            "etcd", "--name", n.name, "--data-dir", str(lab.node_dir(n) / "etcd"),
            "--listen-client-urls",
            f"{_url(n.loopback, ETCD_CLIENT_PORT)},{_url(anycast, ETCD_CLIENT_PORT)}",
            "--advertise-client-urls", _url(n.loopback, ETCD_CLIENT_PORT),
            "--listen-peer-urls", _url(n.loopback, ETCD_PEER_PORT),
            "--initial-advertise-peer-urls", _url(n.loopback, ETCD_PEER_PORT),
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"lab-{lab.name}",
            "--heartbeat-interval", "100", "--election-timeout", "1000",
        ], "etcd")


def etcd_members(lab: Lab, ref: str | int) -> dict[int, str]:
    """etcd member id -> member name (the lab node name), asked through the anycast address."""
    out = lab.exec(ref, ["etcdctl", "--endpoints", etcd_anycast_url(lab), "member", "list",
                         "-w", "json"], timeout=10).stdout
    return {m["ID"]: m["name"] for m in json.loads(out)["members"]}


def etcd_anycast_url(lab: Lab) -> str:
    return _url(lab.site.anycast["etcd"], ETCD_CLIENT_PORT)


def etcd_answering(lab: Lab, ref: str | int, timeout: float = 2) -> int | None:
    """The member id that answers `etcdctl endpoint status` at the anycast address
    from this node, or None when nothing answers."""
    proc = lab.exec(ref, ["etcdctl", "--endpoints", etcd_anycast_url(lab),
                          "--dial-timeout", f"{timeout}s", "--command-timeout", f"{timeout}s",
                          "endpoint", "status", "-w", "json"], timeout=timeout + 10, check=False)
    if proc.returncode != 0:
        return None
    member: int = json.loads(proc.stdout)[0]["Status"]["header"]["member_id"]
    return member


def spread(topo: Topology, k: int) -> list[int]:
    """k nodes far apart: each next one the farthest from those chosen."""
    chosen = [1]
    while len(chosen) < k:
        dist = {c: topo.distances(c) for c in chosen}
        chosen.append(max((n for n in range(1, topo.nodes + 1) if n not in chosen),
                          key=lambda n: (min(dist[c][n] for c in chosen), -n)))
    return chosen


def ranked(topo: Topology, client: int, members: list[int]) -> list[tuple[int, int]]:
    dist = topo.distances(client)
    return sorted((dist[m], m) for m in members if m in dist)


def pick_client(topo: Topology, members: list[int]) -> tuple[int, int, int]:
    """A client whose nearest member is unique, and whose next nearest is unique both
    with the nearest's etcd stopped and with the nearest node dead."""
    for c in range(1, topo.nodes + 1):
        if c in members:
            continue
        r = ranked(topo, c, members)
        if len(r) < 3 or r[0][0] == r[1][0] or r[1][0] == r[2][0]:
            continue
        x, y = r[0][1], r[1][1]
        after = ranked(topo.without(dead=[x]), c, [m for m in members if m != x])
        if len(after) == 2 and after[0][1] == y and after[0][0] < after[1][0]:
            return c, x, y
    raise LabError(f"no suitable client for etcd on {members} in {topo.spec}")


def node_address(lab: Lab, ref: str | int) -> IPv4Address | None:
    block = remembered_block(lab, ref)
    return pods.node_address(block) if block else None


def slot_views(lab: Lab) -> dict[int, dict[str, Any]]:
    """Each live node's control-plane view (its status's `control_plane`)."""
    out: dict[int, dict[str, Any]] = {}
    for n in lab.state.nodes:
        if n.index in lab.state.dead:
            continue
        try:
            out[n.index] = json.loads(lab.status_file(n.index).read_text())["control_plane"]
        except (OSError, ValueError, KeyError):
            out[n.index] = {}
    return out


def slots_differ(lab: Lab, want: dict[int, int]) -> list[str]:
    """What differs from slot -> node index `want`, seen alike by every live node,
    each node saying itself which slot it holds."""
    holders = {str(s): lab.node(i).router_id for s, i in want.items()}
    problems = []
    for i, v in slot_views(lab).items():
        if v.get("holders") != holders:
            problems.append(f"n{i} sees {v.get('holders')}")
        mine = next((s for s, n in want.items() if n == i), None)
        if v.get("slot") != mine:
            problems.append(f"n{i} holds {v.get('slot')}, not {mine}")
    return problems


def lowest_router_ids(lab: Lab, among: list[int], k: int) -> list[int]:
    """The k nodes of `among` with the lowest router-ids, lowest first."""
    return sorted(among, key=lambda i: IPv4Address(lab.node(i).router_id))[:k]


def slot_etcd_differs(lab: Lab, holders: list[int]) -> list[str]:
    """What differs from: the etcd cluster is exactly the members of `holders`, every
    one started, as each holder's own member lists it."""
    from mesh import etcd, plan

    want = {plan.hostname_of(IPv6Address(lab.node(i).loopback)) for i in holders}
    problems = []
    for i in holders:
        url = etcd.url(IPv6Address(lab.node(i).loopback), etcd.CLIENT_PORT)
        r = lab.exec(i, ["etcdctl", "--endpoints", url, "--command-timeout=2s", "member",
                         "list", "-w", "json"], timeout=10, check=False)
        if r.returncode != 0:
            problems.append(f"n{i}'s member does not answer: {r.stderr.strip()[:120]}")
            continue
        names = {m.get("name", "") for m in json.loads(r.stdout).get("members", [])}
        if names != want:
            problems.append(f"n{i}'s member lists {sorted(names)}, not {sorted(want)}")
    return problems


def kube_states(lab: Lab) -> dict[int, str]:
    """Each live node's Kubernetes control-plane state ("running", "no slot", …)."""
    return {i: v.get("kubernetes", {}).get("state", "") for i, v in slot_views(lab).items()}


def apiserver_served_by(lab: Lab, client: int, anycast: IPv6Address, port: int) -> int:
    """The node whose apiserver answers `client` at the anycast address: the one
    whose hostname its serving certificate names (a holder, or an heir)."""
    r = lab.exec(client, [sys.executable, "-c", "import ssl, sys; print(ssl.get_server_"
                          f"certificate(('{anycast}', {port}), timeout=5))"], timeout=30)
    return node_named_by(lab, r.stdout)


def node_named_by(lab: Lab, pem: str) -> int:
    """The lab node whose hostname a serving certificate (PEM) names."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem.encode())
    names = set(cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    [node] = [n.index for n in lab.state.nodes if n.hostname in names]
    return node


_REGISTER = """
import json, sys
from kubernetes import client, config
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
try:
    api.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": sys.argv[2]}})
except client.exceptions.ApiException as e:
    if e.status != 409:  # there already: posted Ready again, as a kubelet back from death
        raise
api.patch_node_status(sys.argv[2], json.loads(sys.argv[3]))
"""


def register_ready(lab: Lab, via: int, kubeconfig: Path, name: str) -> None:
    """The Node `name`, Ready, as its kubelet would post it (kubectl 1.20 cannot
    patch a status: the Python client does), through `kubeconfig` from node `via`."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True",
                                        "reason": "KubeletReady", "lastHeartbeatTime": now,
                                        "lastTransitionTime": now}]}}
    lab.exec(via, [sys.executable, "-c", _REGISTER, str(kubeconfig), name, json.dumps(ready)],
             timeout=60)
