"""VMs of the built image as the kubelet nodes of a cluster whose control plane
is in the network-namespace lab: used by tests/vm/test_kubernetes.py and
`python -m bench.vm kubelets`.

Why the control plane is in the lab: three VMs of the image holding the slots
(2 vCPUs and 2 GiB each, `python -m bench.vm cluster`) had no ready apiserver
after 21 minutes on a 2-core TCG host: each apiserver spent 100 s of CPU
starting and then exited on etcd's "leader changed". So the slot holders are
nodes of the lab, running the very runtime, etcd and Kubernetes binaries of the
image's build natively, with the image's own site; the VMs are cabled into that
lab by tap devices (`Mesh.tap`, `Lab.adopt`), and everything a kubelet node does
(containerd, the kubelet, kube-proxy, CNI, cluster DNS, the overlay, the packet
filter) runs inside the booted image.

    n1 ── n2        four lab nodes in a ring; three hold the slots. w1 is
     │     │        cabled to one holder and to the node without a slot,
    n4 ── n3        w2 to the other two holders (`cabling`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.netns import Lab
from lab.stack import slot_views
from mesh import pki
from mesh.kubelet import APISERVER_PORT
from mesh.site import Site, load_site
from mesh.topology import parse
from tests.lab.conftest import unique_name
from tests.lab.test_controlplane import wait_for
from tests.vm.mesh import Mesh, wait_status
from tests.vm.qemu import VM, poll

# The speeds each VM's two NICs report (`cabling` says where they go): the first
# cable costs less, so the VM's nearest apiserver is one holder, not two at equal cost.
SPEEDS_MBPS = (10000, 1000)
KUBECONFIG = "/run/kubermesh-test/admin.conf"  # in each VM: root's alone, gone at power-off
READY_TIMEOUT = 1200.0  # TCG boot, then containerd, the kubelet and its certificates
WEB = "kubermesh-web"
REPLICAS = 4


@dataclass
class Cluster:
    lab: Lab
    site: Site
    mesh: Mesh
    vms: dict[str, VM]
    kube_bin: Path  # the build's Kubernetes binaries, which the lab runs
    holders: list[int]  # the lab nodes holding the three slots
    up_at: float  # time.monotonic() once the lab had converged
    cables: dict[str, tuple[int, int]]  # VM name -> its two lab neighbours, fast first
    nodes: dict[str, str] = field(default_factory=dict)  # VM name -> its Node's name


def cabling(holders: list[int]) -> dict[str, tuple[int, int]]:
    """Where the VMs are cabled, once the slots are known: w1 to the first holder
    (fast: its nearest apiserver) and to the node without a slot (slow: its way
    round once that holder dies, and the node that then takes the slot); w2 to
    the other two holders. w1 and w2 share no lab node, so a pod on one reaches a
    pod on the other across three hops or more."""
    [spare] = set(range(1, 5)) - set(holders)
    return {"w1": (holders[0], spare), "w2": (holders[1], holders[2])}


def _taps_present(taps: list[str]) -> bool:
    return all(Path(f"/sys/class/net/{t}").exists() for t in taps)


@contextmanager
def kubelet_cluster(raw: Path, site_file: Path, kube_bin: Path,
                    keep_logs: Callable[[], bool]) -> Iterator[Cluster]:
    """The lab (ring:4, the image's site, the build's Kubernetes) with three lab
    nodes holding the slots, and the VMs w1 and w2 powered on and cabled in. Every
    VM and namespace is gone afterwards; their logs are kept when keep_logs()."""
    lab = Lab(unique_name())
    mesh = Mesh(raw)
    try:
        lab.up(parse("ring:4"), site_file=site_file, agent=True, kubernetes=kube_bin)
        lab.wait_converged(timeout=120)
        up_at = time.monotonic()
        # Every lab node is a candidate (2 cores, GiBs); the 1-CPU VMs will not be:
        # three lab nodes take the slots, by no input but their router-ids.
        holders: list[int] = []

        def three_held() -> list[str]:
            holders[:] = sorted(i for i, v in slot_views(lab).items()
                                if v.get("slot") is not None)
            return [] if len(holders) == 3 else [f"held by {holders}"]

        wait_for("three lab nodes holding the slots", three_held, timeout=180)
        cables = cabling(holders)
        vms = {name: mesh.vm(name) for name in cables}
        taps = {name: [mesh.tap(vm, speed_mbps=speed).tap for speed in SPEEDS_MBPS]
                for name, vm in vms.items()}
        mesh.start(*vms.values())
        every_tap = [t for ts in taps.values() for t in ts]
        poll("QEMU's tap devices", lambda: _taps_present(every_tap), 60, every=0.2)
        for name, ts in taps.items():
            for node, tap in zip(cables[name], ts, strict=True):
                lab.adopt(node, tap, name)
        yield Cluster(lab, load_site(site_file), mesh, vms, kube_bin, holders, up_at, cables)
    finally:
        # Also when the cluster never came up (no test has failed yet then), and when
        # an FRR daemon crashed, even if watchfrr brought it back.
        crashes = [str(p.relative_to(lab.dir)) for p in lab.crash_logs()] \
            if lab.exists() else []
        keep = sys.exc_info()[0] is not None or keep_logs() or bool(crashes)
        if crashes:
            warnings.warn(f"lab {lab.name}: FRR crashed ({', '.join(crashes)})",
                          stacklevel=1)
        try:
            kept = mesh.close(keep_logs=keep)
            if kept is not None:
                print(f"\nVM consoles kept in {kept}")
        finally:
            kept = lab.down(keep_logs=keep)
            if kept is not None:
                print(f"lab {lab.name}: logs kept in {kept}")


def admin_kubeconfig(c: Cluster, dest: Path) -> Path:
    """An administrator's kubeconfig made from the site, naming the anycast address."""
    dest.write_text(pki.admin_kubeconfig(
        c.site, f"https://[{c.site.anycast['apiserver']}]:{APISERVER_PORT}"))
    dest.chmod(0o600)
    return dest


def kubectl(vm: VM, *args: str, timeout: float = 90, check: bool = True,
            kubeconfig: str = KUBECONFIG) -> str:
    """kubectl on the guest, through the apiserver's anycast address."""
    try:
        r = vm.ssh(" ".join(["kubectl", "--kubeconfig", kubeconfig, "--request-timeout=20s",
                             *args]), timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        if check:
            raise
        return ""  # a busy TCG guest: the caller polls again
    if check and r.returncode != 0:
        raise AssertionError(f"{vm.name}: kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout if r.returncode == 0 else ""


def ready_nodes(vm: VM, kubeconfig: str = KUBECONFIG) -> set[str]:
    """The Nodes whose Ready condition is True, as kubectl on vm reads them."""
    out = kubectl(vm, "get", "nodes", "-o", "json", check=False, kubeconfig=kubeconfig)
    ready = set()
    for node in json.loads(out)["items"] if out else ():
        if any(c["type"] == "Ready" and c["status"] == "True"
               for c in node["status"].get("conditions", ())):
            ready.add(node["metadata"]["name"])
    return ready


def join(c: Cluster, conf: Path) -> dict[str, float]:
    """Copy the admin kubeconfig into each VM and wait until every VM's Node is
    Ready (each one's time taken as soon as it is) and its runtime says its kubelet
    runs; seconds from each VM's power-on to its Node Ready."""
    for name, vm in c.vms.items():
        vm.wait_ssh()
        vm.copy_in({"admin.conf": conf}, str(Path(KUBECONFIG).parent))
        c.nodes[name] = wait_status(vm, "an identity", lambda st: bool(st["hostname"]))[
            "hostname"]
    took: dict[str, float] = {}

    def all_ready() -> bool:
        for vm in c.vms.values():  # whichever guest answers first
            ready = ready_nodes(vm)
            for name, each in c.vms.items():
                if c.nodes[name] in ready and name not in took:
                    assert each.started_at is not None
                    took[name] = time.monotonic() - each.started_at
        return len(took) == len(c.vms)

    poll("every guest's Node Ready", all_ready, READY_TIMEOUT, every=1)
    for vm in c.vms.values():
        wait_status(vm, "the kubelet running (stage kubelet)",
                    lambda st: st["stage"] == "kubelet", 120)
    return took


def web_manifest() -> dict[str, Any]:
    """A Deployment of REPLICAS busybox httpd pods spread over the nodes (each
    serves its own name), and a Service in front of them."""
    return {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": WEB},
         "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": WEB}},
                  "template": {"metadata": {"labels": {"app": WEB}}, "spec": {
                      # ScheduleAnyway: with a node dead, its pods must go to the others.
                      "topologySpreadConstraints": [{
                          "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                          "whenUnsatisfiable": "ScheduleAnyway",
                          "labelSelector": {"matchLabels": {"app": WEB}}}],
                      "terminationGracePeriodSeconds": 1,
                      "containers": [{
                          "name": "web", "image": "kubermesh.local/busybox:1.35",
                          "imagePullPolicy": "Never",
                          "command": ["sh", "-c", "mkdir -p /www && hostname > "
                                      "/www/index.html && exec httpd -f -p 8080 -h /www"],
                          "ports": [{"containerPort": 8080}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": WEB},
         "spec": {"selector": {"app": WEB}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ]}


def deploy_web(vm: VM, scratch: Path) -> None:
    body = scratch / "web.json"
    body.write_text(json.dumps(web_manifest()))
    vm.copy_in({"web.json": body}, str(Path(KUBECONFIG).parent))
    kubectl(vm, "apply", "-f", str(Path(KUBECONFIG).parent / "web.json"))


def running_on(vm: VM) -> dict[str, list[dict[str, Any]]]:
    """The web pods Running (not being deleted), by Node."""
    out = kubectl(vm, "get", "pods", "-l", f"app={WEB}", "-o", "json", check=False)
    by: dict[str, list[dict[str, Any]]] = {}
    for p in json.loads(out)["items"] if out else ():
        if p["status"].get("phase") == "Running" and p["status"].get("podIP") \
                and "deletionTimestamp" not in p["metadata"]:
            by.setdefault(p["spec"]["nodeName"], []).append(p)
    return by


def spread(c: Cluster) -> dict[str, list[dict[str, Any]]]:
    """Wait until the web pods all run, on both guests; them, by Node."""
    def both() -> dict[str, list[dict[str, Any]]] | None:
        by = running_on(c.vms["w1"])
        return by if sum(map(len, by.values())) == REPLICAS and len(by) == 2 else None

    result: dict[str, list[dict[str, Any]]] = poll(
        f"{REPLICAS} web pods Running on both guests", both, 900, every=3)
    return result


def all_on(c: Cluster, name: str, timeout: float) -> None:
    """Wait until every web pod runs on the guest `name`."""
    poll(f"all {REPLICAS} web pods Running on {name}", lambda: len(
        running_on(c.vms[name]).get(c.nodes[name], ())) == REPLICAS, timeout, every=1)
