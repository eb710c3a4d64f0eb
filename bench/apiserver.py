"""The control plane under loss: what a client of the apiserver's anycast address
sees when the control-plane node it reaches dies, and how soon the pod of a dead
worker is made again. Real etcd and the build's Kubernetes binaries in a lab.

    python -m bench.apiserver [--trials 4] [--evictions 3] [--etcd-ms 100/1000]

The lab is grid:3x3 with the node runtime in every node: the three lowest
router-ids take the control-plane slots and run etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (the build's, from Debian's source,
cached in /var/cache/kubermesh/kubernetes: `./dev.sh build` makes them).

apiserver: a node without a slot asks /readyz of the anycast address every
20 ms (bench.apiserver_probe; ready only while that apiserver reaches an etcd
with a leader). 1.5 s in, the holder answering it dies silently (Lab.kill). The
outage is from the kill to the first ready answer from another apiserver after
which every answer is ready (target <= 1 s). Trials alternate: the holder
follows etcd's leader, then leads it (etcdctl move-leader), when the outage
includes etcd's election. The holder is then revived and the client is back on
it before the next trial.

eviction: another node without a slot registers as a kubelet would (its Node,
Ready), as does the client's node, which stays up. The first gets the pod of a
ReplicaSet and dies silently. Measured: until its Node is marked unreachable,
and until the pod is replaced (Kubernetes' defaults: 40 s + 300 s; target
<= 30 s). No kubelet runs in the lab: the
replacement is the new pod object; it cannot run on the dead node it is bound to.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from bench.common import lab, probe_while, save, site_file, summary
from firstboot.files import write_atomic
from image.kubernetes import CACHE
from image.kubesource import find_built
from lab.netns import Lab, LabError
from lab.stack import (
    apiserver_served_by,
    kube_states,
    lowest_router_ids,
    ranked,
    register_ready,
)
from mesh import etcd, eviction, pki
from mesh.kubelet import APISERVER_PORT
from mesh.topology import Topology, parse, pieces

TOPOLOGY = "grid:3x3"
STREAM = 10.0
KILL_AT = 1.5


def wait(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


class Cluster:
    """kubectl (the build's) in a lab node, as the cluster's administrator, through
    the apiserver's anycast address."""

    def __init__(self, the_lab: Lab, kube_bin: Path, work: Path) -> None:
        self.lab, self.kube_bin = the_lab, kube_bin
        self.anycast = the_lab.site.anycast["apiserver"]
        self.url = f"https://[{self.anycast}]:{APISERVER_PORT}"
        self.conf = work / "admin.conf"
        write_atomic(self.conf, pki.admin_kubeconfig(the_lab.site, self.url), 0o600)
        self.ca = work / "ca.crt"
        write_atomic(self.ca, pki.ca_certificate(the_lab.site), 0o644)

    def kubectl(self, via: int, *args: str, check: bool = True) -> str:
        r = self.lab.exec(via, [str(self.kube_bin / "kubectl"), "--kubeconfig", str(self.conf),
                                "--request-timeout=5s", *args], timeout=30, check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} on n{via}: {r.stderr.strip()}")
        return r.stdout if r.returncode == 0 else ""

    def ready(self, via: int) -> bool:
        return self.kubectl(via, "get", "--raw", "/readyz", check=False) == "ok"


def apiserver_trial(c: Cluster, client: int, holders: list[int], lead: bool) -> dict[str, Any]:
    """The holder answering the client dies; `lead`: it led etcd then (the outage then
    includes etcd's election of a new leader)."""
    the_lab = c.lab
    nearest = apiserver_served_by(the_lab, client, c.anycast, APISERVER_PORT)
    make_leader(the_lab, holders, nearest, lead)
    killed_at, out = probe_while(
        the_lab, client, "bench.apiserver_probe",
        [str(c.anycast), str(APISERVER_PORT), str(c.ca), str(STREAM)], STREAM, KILL_AT,
        lambda: the_lab.kill(nearest))
    dead = the_lab.node(nearest).hostname
    samples: list[tuple[float, float, list[str] | None]] = json.loads(out)
    before = [answered for _, answered, names in samples
              if answered < killed_at and names and dead in names]
    after = [(answered, names is not None and dead not in names)
             for sent, answered, names in samples if sent >= killed_at]
    # The outage ends with the first answer from which every later one is ready
    # and from another apiserver: no flapping back, no etcd election still going.
    bad = [i for i, (_, good) in enumerate(after) if not good]
    first_good = bad[-1] + 1 if bad else 0
    if not before or first_good >= len(after):
        raise RuntimeError(f"answers from n{nearest} before the kill: {len(before)}; the "
                           f"client was not answered steadily by another apiserver within "
                           f"{STREAM - KILL_AT:.1f} s of it")
    back = after[first_good][0]
    return {"holder": nearest, "led_etcd": lead, "outage_s": back - killed_at,
            "gap_s": back - before[-1], "failed_requests": len(bad)}


def etcd_status(the_lab: Lab, holder: int) -> tuple[int, int]:
    """(member id, leader's member id) of the holder's etcd member."""
    url = etcd.url(IPv6Address(the_lab.node(holder).loopback), etcd.CLIENT_PORT)
    out = the_lab.exec(holder, ["etcdctl", "--endpoints", url, "--command-timeout=3s",
                                "endpoint", "status", "-w", "json"], timeout=20).stdout
    status = json.loads(out)[0]["Status"]
    return int(status["header"]["member_id"]), int(status["leader"])


def make_leader(the_lab: Lab, holders: list[int], holder: int, lead: bool) -> None:
    """Move etcd's leadership to `holder` (lead) or away from it (not lead)."""
    ids = {h: etcd_status(the_lab, h) for h in holders}
    me, leader = ids[holder]
    if (me == leader) == lead:
        return
    [current] = [h for h, (m, _) in ids.items() if m == leader]
    target = me if lead else next(m for h, (m, _) in ids.items() if h != holder)
    url = etcd.url(IPv6Address(the_lab.node(current).loopback), etcd.CLIENT_PORT)
    the_lab.exec(current, ["etcdctl", "--endpoints", url, "move-leader", f"{target:x}"],
                 timeout=30)
    wait(f"etcd's leadership {'on' if lead else 'off'} n{holder}",
         lambda: (etcd_status(the_lab, holder)[0] == etcd_status(the_lab, holder)[1]) == lead,
         30)


def _json_file(c: Cluster, name: str, body: dict[str, Any]) -> Path:
    path = c.conf.with_name(name)
    write_atomic(path, json.dumps(body), 0o600)
    return path


def eviction_trial(c: Cluster, via: int, victim: int, trial: int) -> dict[str, Any]:
    name = c.lab.node(victim).hostname
    register_ready(c.lab, victim, c.conf, name)
    # And the client's node, which stays: were every Node not Ready, Kubernetes'
    # node lifecycle controller would enter "master disruption mode", lift the
    # taints and evict nothing. (Posted for each trial: Ready lasts 40 s unposted.)
    register_ready(c.lab, via, c.conf, c.lab.node(via).hostname)
    app = f"victim{trial}"
    c.kubectl(via, "create", "-f", str(_json_file(c, "rs.json", {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": app, "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                 "template": {"metadata": {"labels": {"app": app}},
                              "spec": {"nodeName": name, "containers": [{
                                  "name": "c", "image": "kubermesh.local/busybox:1.35",
                                  "command": ["sleep", "3600"]}]}}}})))

    def pods() -> list[dict[str, Any]]:
        out = c.kubectl(via, "get", "pods", "-l", f"app={app}", "-o", "json", check=False)
        return list(json.loads(out)["items"]) if out else []

    def lost_by_the_mesh() -> bool:
        """Marked by the mesh's eviction controller, not (later) by Kubernetes' own
        node lifecycle controller."""
        out = c.kubectl(via, "get", "node", name, "-o", "json", check=False)
        node = json.loads(out) if out else {}
        ready = [x for x in node.get("status", {}).get("conditions", []) if x["type"] == "Ready"]
        return (eviction.is_marked(node) and bool(ready) and ready[0]["status"] == "Unknown"
                and ready[0].get("reason") == eviction.REASON)

    wait("the ReplicaSet's pod", lambda: bool(pods()), 60)
    first = pods()[0]["metadata"]["uid"]
    if lost_by_the_mesh():
        raise RuntimeError(f"{name} marked unreachable before it died")
    c.lab.kill(victim)
    killed = time.monotonic()
    marked = replaced = None
    while (marked is None or replaced is None) and time.monotonic() - killed < 120:
        if marked is None and lost_by_the_mesh():
            marked = time.monotonic() - killed
        if replaced is None and any(p["metadata"]["uid"] != first for p in pods()):
            replaced = time.monotonic() - killed
        time.sleep(0.2)
    if marked is None or replaced is None:
        raise RuntimeError(f"n{victim} ({name}) dead 120 s: marked unreachable by the mesh "
                           f"after {marked} s, its pod replaced after {replaced} s")
    return {"victim": victim, "marked_unreachable_s": marked, "pod_replaced_s": replaced}


def unique_nearest_client(topo: Topology, holders: list[int]) -> int:
    """A node without a slot with one nearest holder (no equal-cost tie, so every
    connection of the probe reaches the same apiserver until it dies)."""
    for c in range(1, topo.nodes + 1):
        if c not in holders:
            r = ranked(topo, c, holders)
            if r[0][0] < r[1][0]:
                return c
    raise RuntimeError(f"no node of {topo.spec} has a unique nearest holder of {holders}")


def victims(topo: Topology, keep: list[int], k: int) -> list[int]:
    """k nodes, each of which can die alone without cutting any of `keep` off."""
    out = []
    for v in range(1, topo.nodes + 1):
        if v in keep:
            continue
        piece = pieces([n for n in range(1, topo.nodes + 1) if n != v],
                       topo.without(dead=[v]).edges)
        if len({piece[n] for n in keep}) == 1:
            out.append(v)
    if len(out) < k:
        raise RuntimeError(f"only {len(out)} nodes of {topo.spec} can die without cutting "
                           f"the client or a holder off: fewer trials")
    return out[:k]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4, help="apiserver failovers")
    p.add_argument("--evictions", type=int, default=3, help="dead workers")
    p.add_argument("--etcd-ms", metavar="HEARTBEAT/ELECTION",
                   help="etcd's timers in the site (default: the site's, 500/5000)")
    args = p.parse_args()
    etcd_ms = None
    if args.etcd_ms:
        try:
            heartbeat, election = (int(x) for x in args.etcd_ms.split("/"))
        except ValueError:
            p.error(f"--etcd-ms {args.etcd_ms!r}: expected HEARTBEAT/ELECTION in ms, "
                    "e.g. 100/1000")
        etcd_ms = (heartbeat, election)
    if args.trials < 1 or args.evictions < 1:
        p.error("--trials and --evictions must be at least 1")
    built = find_built(CACHE)
    if built is None:
        sys.exit(f"no Kubernetes build in {CACHE}: `./dev.sh build` makes one from Debian's "
                 "source")
    with lab() as the_lab:
        topo = parse(TOPOLOGY)
        the_lab.up(topo, site_file=site_file(etcd_ms=etcd_ms), agent=True,
                   kubernetes=built.binaries, progress=print)
        cp = the_lab.site.control_plane
        timers = (cp.etcd_heartbeat_ms, cp.etcd_election_ms)
        nodes = [n.index for n in the_lab.state.nodes]
        holders = lowest_router_ids(the_lab, nodes, 3)
        client = unique_nearest_client(topo, holders)
        dying = victims(topo, [client, *holders], args.evictions)
        c = Cluster(the_lab, built.binaries, the_lab.dir)
        wait("the control plane on the three slot holders", lambda: all(
            (s == "running") == (i in holders) for i, s in kube_states(the_lab).items()), 300)
        wait("the anycast apiserver ready", lambda: c.ready(client), 120)
        print(f"control plane on {', '.join(f'n{h}' for h in holders)}; client n{client}; "
              f"etcd heartbeat {timers[0]} ms, election timeout {timers[1]} ms", flush=True)
        failover = []
        for i in range(args.trials):
            r = apiserver_trial(c, client, holders, lead=i % 2 == 1)
            failover.append(r)
            print(f"trial {i + 1}: n{r['holder']} died"
                  f"{' (it led etcd)' if r['led_etcd'] else ''}; the client steadily answered by "
                  f"another apiserver {r['outage_s']:.3f} s after (gap {r['gap_s']:.3f} s, "
                  f"{r['failed_requests']} requests failed)", flush=True)
            holder: int = r["holder"]
            the_lab.revive(holder)
            the_lab.wait_converged(120)

            def back(h: int = holder) -> bool:
                try:
                    return c.ready(client) and apiserver_served_by(
                        the_lab, client, c.anycast, APISERVER_PORT) == h
                except (LabError, ValueError, subprocess.TimeoutExpired):  # no answer yet
                    return False
            wait(f"n{holder} serving the client again", back, 300)
        evictions = []
        for i, victim in enumerate(dying):
            r = eviction_trial(c, client, victim, i)
            evictions.append(r)
            print(f"trial {i + 1}: n{victim} died; marked unreachable after "
                  f"{r['marked_unreachable_s']:.1f} s, its pod replaced after "
                  f"{r['pod_replaced_s']:.1f} s", flush=True)
            the_lab.revive(victim)
            the_lab.wait_converged(120)
    result = {"topology": TOPOLOGY, "holders": holders, "client": client,
              "etcd_heartbeat_ms": timers[0], "etcd_election_ms": timers[1],
              "kubernetes": built.binaries.name, "probe_interval_s": 0.02,
              "toleration_s": eviction.TOLERATION_SECONDS,
              "apiserver_trials": failover, "eviction_trials": evictions,
              "apiserver_outage": summary([r["outage_s"] for r in failover]),
              **{f"apiserver_outage_{k}": summary(v) for k, v in (
                  ("holder_led_etcd", [r["outage_s"] for r in failover if r["led_etcd"]]),
                  ("holder_followed", [r["outage_s"] for r in failover if not r["led_etcd"]]))
                 if v},
              "marked_unreachable": summary([r["marked_unreachable_s"] for r in evictions]),
              "pod_replaced": summary([r["pod_replaced_s"] for r in evictions])}
    print(json.dumps({k: v for k, v in result.items() if k.startswith("apiserver_outage")
                      or k in ("marked_unreachable", "pod_replaced")}))
    save("apiserver", result)


if __name__ == "__main__":
    main()
