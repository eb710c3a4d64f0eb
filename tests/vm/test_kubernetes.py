"""Kubernetes on the image: VMs of the built image join, as kubelets, a cluster
whose control plane elected itself, run pods that reach each other across the
mesh and a Service by its DNS name, and live through the deaths of the nearest
control-plane node and of a worker.

Why the control plane is in the lab: three VMs of the image holding the slots
(2 vCPUs and 2 GiB each, `python -m bench.vm cluster`) never had a ready
apiserver in 21 minutes on this 2-core TCG host: each apiserver spent 100 s of
CPU starting and exited on etcd's "leader changed". So the three slot holders
are nodes of the network-namespace lab, running the very runtime, etcd and
Kubernetes binaries of the image's build natively, with the image's own site;
the VMs are cabled into that lab by tap devices, and everything a kubelet node
does (containerd, the kubelet, kube-proxy, CNI, cluster DNS, the overlay, the
packet filter) runs inside the booted image.

    w1 ── n1 ── n2 ── w1        w1's cables go to n1 and n2, w2's to n3 and n4,
           │     │              and n1..n4 are a ring: a pod on w1 reaches one
    w2 ── n4 ── n3 ── w2        on w2 across three hops.

Ordered: the worker w2 dies after the nearest holder did, and that holder stays
dead until its slot is taken over.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from image.kubernetes import CACHE
from image.kubesource import find_built
from lab.netns import Lab
from lab.stack import kube_states, slot_etcd_differs, slot_views
from mesh import pki
from mesh.kubelet import APISERVER_PORT
from mesh.site import Site, load_site
from mesh.topology import parse
from tests.lab.conftest import unique_name
from tests.lab.test_controlplane import wait_for
from tests.vm import conftest
from tests.vm.conftest import Image
from tests.vm.mesh import Mesh, status, wait_status
from tests.vm.qemu import VM, poll

pytestmark = [pytest.mark.vm, pytest.mark.lab]

KUBECONFIG = "/run/kubermesh-test/admin.conf"  # in each VM: root's alone, gone at power-off
CABLES = {"w1": (1, 2), "w2": (3, 4)}  # each VM's two lab neighbours
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
    nodes: dict[str, str] = field(default_factory=dict)  # VM name -> its Node's name


def taps_present(nics: list[str]) -> bool:
    return all(Path(f"/sys/class/net/{t}").exists() for t in nics)


@pytest.fixture(scope="module")
def cluster(image: Image, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if image.manifest["kubernetes"]["source"] == "none":
        pytest.skip("no Kubernetes in this image (" +
                    image.manifest["kubernetes"]["why_none"] + ")")
    site_file = image.dir / "demo-site.toml"
    if not site_file.is_file():
        pytest.skip(f"no {site_file}: the lab must share the image's site, and an image "
                    "built with --site keeps it where its owner put it")
    built = find_built(CACHE)
    if built is None:
        pytest.skip(f"no Kubernetes build in {CACHE}: `./dev.sh build` makes one")
    # Two host cores cannot also emulate the other tests' guests.
    conftest.power_off_guests()
    lab = Lab(unique_name())
    mesh = Mesh(image.raw)
    failed_before = request.session.testsfailed
    try:
        lab.up(parse("ring:4"), site_file=site_file, agent=True, kubernetes=built.binaries)
        lab.wait_converged(timeout=120)
        vms = {name: mesh.vm(name) for name in CABLES}
        taps = {name: [mesh.tap(vm).tap for _ in CABLES[name]] for name, vm in vms.items()}
        mesh.start(*vms.values())
        every_tap = [t for ts in taps.values() for t in ts]
        poll("QEMU's tap devices", lambda: taps_present(every_tap), 60, every=0.2)
        for name, ts in taps.items():
            for node, tap in zip(CABLES[name], ts, strict=True):
                lab.adopt(node, tap, name)
        # Every lab node is a candidate (2 cores, GiBs); the 1-CPU VMs are not: three
        # lab nodes take the slots, by no input but their router-ids.
        def held() -> list[int]:
            return sorted(i for i, v in slot_views(lab).items() if v.get("slot") is not None)

        wait_for("three lab nodes holding the slots", lambda: [] if len(held()) == 3
                 else [f"held by {held()}"], timeout=180)
        yield Cluster(lab, load_site(site_file), mesh, vms, built.binaries, held())
    finally:
        failed = request.session.testsfailed > failed_before
        kept = mesh.close(keep_logs=failed)
        if kept is not None:
            print(f"\nVM consoles kept in {kept}")
        kept = lab.down(keep_logs=failed)
        if kept is not None:
            print(f"lab {lab.name}: logs kept in {kept}")


def kubectl(vm: VM, *args: str, timeout: float = 90, check: bool = True) -> str:
    """kubectl on the guest, through the apiserver's anycast address."""
    r = vm.ssh(" ".join(["kubectl", "--kubeconfig", KUBECONFIG, "--request-timeout=20s",
                         *args]), timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"{vm.name}: kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout if r.returncode == 0 else ""


def ready_nodes(vm: VM) -> set[str]:
    out = kubectl(vm, "get", "nodes", "-o", "json", check=False)
    ready = set()
    for node in json.loads(out)["items"] if out else ():
        if any(c["type"] == "Ready" and c["status"] == "True"
               for c in node["status"].get("conditions", ())):
            ready.add(node["metadata"]["name"])
    return ready


def pods(vm: VM) -> list[dict[str, Any]]:
    out = kubectl(vm, "get", "pods", "-l", f"app={WEB}", "-o", "json", check=False)
    return list(json.loads(out)["items"]) if out else []


def running_on(vm: VM) -> dict[str, list[dict[str, Any]]]:
    """The web pods Running (not being deleted), by Node."""
    by: dict[str, list[dict[str, Any]]] = {}
    for p in pods(vm):
        if p["status"].get("phase") == "Running" and p["status"].get("podIP") \
                and "deletionTimestamp" not in p["metadata"]:
            by.setdefault(p["spec"]["nodeName"], []).append(p)
    return by


def served_by(vm: VM, c: Cluster) -> int:
    """The lab node whose apiserver answers vm at the anycast address (the hostname
    its serving certificate names)."""
    anycast = c.site.anycast["apiserver"]
    pem = vm.ssh(f"python3 -c \"import ssl; print(ssl.get_server_certificate("
                 f"('{anycast}', {APISERVER_PORT}), timeout=10))\"", timeout=60).stdout
    names = set(x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    [node] = [n.index for n in c.lab.state.nodes if n.hostname in names]
    return node


def test_the_images_kubelets_join_a_control_plane_that_elected_itself(
        cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    took = wait_for("the control plane running on three slot holders", lambda: [
        f"n{i}: {s or 'no status'}" for i, s in kube_states(c.lab).items()
        if (s == "running") != (i in c.holders)] + (
        [f"holders {c.holders}"] if len(c.holders) != 3 else []), timeout=300)
    print(f"\ncontrol plane running on n{c.holders} {took:.0f} s after the lab was up")
    # The admin's kubeconfig, made from the site (as `kubermesh site` holders do),
    # naming the anycast address; copied into each guest's /run, root's alone.
    conf = tmp_path / "admin.conf"
    conf.write_text(pki.admin_kubeconfig(
        c.site, f"https://[{c.site.anycast['apiserver']}]:{APISERVER_PORT}"))
    conf.chmod(0o600)
    names = {}
    for name, vm in c.vms.items():
        vm.wait_ssh()
        vm.copy_in({"admin.conf": conf}, "/run/kubermesh-test")
        names[name] = wait_status(vm, "an identity", lambda st: bool(st["hostname"]))[
            "hostname"]
    c.nodes = names
    for vm in c.vms.values():
        wait_status(vm, "the kubelet running (stage kubelet)",
                    lambda st: st["stage"] == "kubelet", READY_TIMEOUT)
    w1 = c.vms["w1"]
    poll("both guests' Nodes Ready", lambda: set(names.values()) <= ready_nodes(w1),
         READY_TIMEOUT, every=5)
    for name, vm in c.vms.items():
        assert vm.started_at is not None
        print(f"{name}: power-on -> Node Ready within {time.monotonic() - vm.started_at:.0f} s")
        st = status(vm)
        assert st["control_plane"]["slot"] is None, st["control_plane"]
        assert {x["service"]: x["state"] for x in st["anycast"]}["apiserver"] == "routed"
    # kubectl from every node through the anycast address: each guest, and the lab
    # node that holds no slot.
    for vm in c.vms.values():
        assert set(names.values()) <= ready_nodes(vm)
    spare = next(n.index for n in c.lab.state.nodes if n.index not in c.holders)
    r = c.lab.exec(spare, [str(c.kube_bin / "kubectl"), "--kubeconfig", str(conf), "get",
                           "nodes", "-o", "name"])
    assert {f"node/{n}" for n in names.values()} <= set(r.stdout.split())


MANIFEST = {"apiVersion": "v1", "kind": "List", "items": [
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": WEB},
     "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": WEB}},
              "template": {"metadata": {"labels": {"app": WEB}}, "spec": {
                  "topologySpreadConstraints": [{
                      "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                      "whenUnsatisfiable": "ScheduleAnyway",
                      "labelSelector": {"matchLabels": {"app": WEB}}}],
                  "terminationGracePeriodSeconds": 1,
                  "containers": [{
                      "name": "web", "image": "kubermesh.local/busybox:1.35",
                      "imagePullPolicy": "Never",
                      "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html"
                                  " && exec httpd -f -p 8080 -h /www"],
                      "ports": [{"containerPort": 8080}]}]}}}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": WEB},
     "spec": {"selector": {"app": WEB}, "ports": [{"port": 80, "targetPort": 8080}]}},
]}


def exec_in(vm: VM, pod: str, command: str, timeout: float = 120) -> str:
    return kubectl(vm, "exec", pod, "--", "sh", "-c", f"'{command}'", timeout=timeout)


def test_pods_spread_reach_each_other_across_hops_and_a_service_by_name(
        cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    w1, w2 = c.vms["w1"], c.vms["w2"]
    body = tmp_path / "web.json"
    body.write_text(json.dumps(MANIFEST))
    w1.copy_in({"web.json": body}, "/run/kubermesh-test")
    kubectl(w1, "apply", "-f", "/run/kubermesh-test/web.json")
    by = poll(f"{REPLICAS} web pods Running on both guests", lambda: (
        lambda b: b if sum(map(len, b.values())) == REPLICAS and len(b) == 2 else None)(
        running_on(w1)), 900, every=5)
    here, there = by[c.nodes["w1"]], by[c.nodes["w2"]]
    # w1 and w2 are not neighbours: the overlay carries this over the lab's nodes.
    assert status(w2)["router_id"] not in {x["neighbour"] for x in status(w1)["links"]}
    src = here[0]["metadata"]["name"]
    for peer in there + here[1:]:  # across the mesh, and beside it on the same bridge
        ip = peer["status"]["podIP"]
        out = exec_in(w1, src, f"ping -c 3 -W 5 {ip}")
        assert " 0% packet loss" in out, out
    # The Service by its name, through the node's cluster DNS and kube-proxy. (The
    # workload is busybox-static, whose glibc cannot resolve a name itself inside a
    # container: its nslookup asks the pod's DNS server, and wget takes the address.)
    service_ip = json.loads(kubectl(w1, "get", "service", WEB, "-o", "json"))["spec"][
        "clusterIP"]
    fqdn = f"{WEB}.default.svc.cluster.local"
    found = exec_in(w1, src, f"nslookup {fqdn}")
    assert re.search(rf"^Name:\s*{re.escape(fqdn)}\s*\nAddress:\s*{re.escape(service_ip)}\s*$",
                     found, re.M), found
    names = {p["metadata"]["name"] for ps in by.values() for p in ps}
    answers = {exec_in(w1, src, f"wget -q -T 10 -O - http://{service_ip}/").strip()
               for _ in range(6)}
    assert answers and answers <= names, answers


def test_the_apiserver_stays_reachable_when_the_nearest_holder_dies(cluster: Cluster) -> None:
    c = cluster
    w1 = c.vms["w1"]
    nearest = served_by(w1, c)
    assert nearest in CABLES["w1"] and nearest in c.holders, nearest
    c.lab.kill(nearest)
    killed = time.monotonic()
    poll("a write through the anycast address again", lambda: kubectl(
        w1, "annotate", "--overwrite", "deployment", WEB,
        f"kubermesh.test/holder-died=n{nearest}", check=False) or None, 120, every=0.5)
    print(f"\nw1's writes through the anycast address answered again "
          f"{time.monotonic() - killed:.1f} s after n{nearest} died")
    assert served_by(w1, c) != nearest


def test_a_dead_workers_pods_run_elsewhere(cluster: Cluster) -> None:
    c = cluster
    w1, w2 = c.vms["w1"], c.vms["w2"]
    w2.stop()
    died = time.monotonic()
    poll(f"all {REPLICAS} web pods Running on w1", lambda: (
        lambda b: b if len(b.get(c.nodes["w1"], ())) == REPLICAS else None)(running_on(w1)),
        300, every=2)
    print(f"\nw2's pods Running on w1 {time.monotonic() - died:.0f} s after w2 died")
    node = json.loads(kubectl(w1, "get", "node", c.nodes["w2"], "-o", "json"))
    assert any(t["key"] == "node.kubernetes.io/unreachable"
               for t in node["spec"].get("taints", ())), node["spec"]


def test_a_dead_holders_slot_is_taken_over_and_etcd_has_three_members(
        cluster: Cluster) -> None:
    """The holder killed above stayed dead: after the site's grace, the lab node that
    held no slot takes it, and etcd is three healthy members again."""
    c = cluster
    [dead] = [i for i in c.holders if i in c.lab.state.dead]
    heir = next(n.index for n in c.lab.state.nodes if n.index not in c.holders)
    now = [i for i in c.holders if i != dead] + [heir]
    wait_for(f"n{heir} holding n{dead}'s slot, with etcd on {now}", lambda: (
        [] if kube_states(c.lab).get(heir) == "running" else
        [f"n{heir}: {kube_states(c.lab).get(heir)}"]) + slot_etcd_differs(c.lab, now),
        timeout=c.site.control_plane.grace + 300)
    assert c.nodes["w1"] in ready_nodes(c.vms["w1"])
