"""Kubernetes on the image: VMs of the built image join, as kubelets, a cluster
whose control plane elected itself, run pods that reach each other across the
mesh and a Service by its DNS name, and live through the deaths of the nearest
control-plane node (kept dead until its slot is taken over) and of a worker.

The control plane runs in the lab, cabled to the VMs (tests/vm/cluster.py says
why and how). Ordered, and last in the session: it powers the other guests off.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from image.kubernetes import CACHE
from image.kubesource import find_built
from lab.stack import kube_states, node_named_by, slot_etcd_differs
from mesh.kubelet import APISERVER_PORT
from tests.lab.test_controlplane import wait_for
from tests.vm import conftest
from tests.vm.cluster import (
    WEB,
    Cluster,
    admin_kubeconfig,
    all_on,
    deploy_web,
    join,
    kubectl,
    kubelet_cluster,
    ready_nodes,
    running_on,
    spread,
)
from tests.vm.conftest import Image
from tests.vm.mesh import status
from tests.vm.qemu import VM, poll

pytestmark = [pytest.mark.vm, pytest.mark.lab]


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
    failed_before = request.session.testsfailed
    with kubelet_cluster(image.raw, site_file, built.binaries,
                         lambda: request.session.testsfailed > failed_before) as c:
        yield c


def served_by(vm: VM, c: Cluster) -> int:
    """The lab node whose apiserver answers vm at the anycast address (the hostname
    its serving certificate names)."""
    anycast = c.site.anycast["apiserver"]
    pem = vm.ssh(f"python3 -c \"import ssl; print(ssl.get_server_certificate("
                 f"('{anycast}', {APISERVER_PORT}), timeout=10))\"", timeout=60).stdout
    return node_named_by(c.lab, pem)


def test_the_images_kubelets_join_a_control_plane_that_elected_itself(
        cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = cluster
    wait_for("the control plane running on the three slot holders", lambda: [
        f"n{i}: {s or 'no status'}" for i, s in kube_states(c.lab).items()
        if (s == "running") != (i in c.holders)], timeout=300)
    took = time.monotonic() - c.up_at
    conf = admin_kubeconfig(c, tmp_path / "admin.conf")
    ready = join(c, conf)
    with capsys.disabled():  # figures of this run, TCG
        print(f"\nkubernetes figures: control plane running on n{c.holders} within "
              f"{took:.0f} s of the lab converging; power-on -> Node Ready " +
              ", ".join(f"{name} {seconds:.0f} s" for name, seconds in ready.items()))
    for vm in c.vms.values():
        st = status(vm)
        assert st["control_plane"]["slot"] is None, st["control_plane"]
        assert {x["service"]: x["state"] for x in st["anycast"]}["apiserver"] == "routed"
    # kubectl from every node through the anycast address: each guest, and the lab
    # node that holds no slot.
    names = set(c.nodes.values())

    def sees_both(vm: VM) -> bool:
        return names <= ready_nodes(vm)

    for vm in c.vms.values():
        poll(f"kubectl on {vm.name}: both Nodes Ready", functools.partial(sees_both, vm),
             120, every=2)
    spare = next(n.index for n in c.lab.state.nodes if n.index not in c.holders)
    r = c.lab.exec(spare, [str(c.kube_bin / "kubectl"), "--kubeconfig", str(conf), "get",
                           "nodes", "-o", "name"])
    assert {f"node/{n}" for n in names} <= set(r.stdout.split())


def exec_in(vm: VM, pod: str, command: str, timeout: float = 120) -> str:
    return kubectl(vm, "exec", pod, "--", "sh", "-c", f"'{command}'", timeout=timeout)


def http_body(response: str) -> str:
    head, _, body = response.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], response
    return body.strip()


def test_pods_spread_reach_each_other_across_hops_and_a_service_by_name(
        cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    w1, w2 = c.vms["w1"], c.vms["w2"]
    deploy_web(w1, tmp_path)
    by = spread(c)
    # Four pods on two nodes: one node has two or more, and the source is one of them.
    src_node = max(by, key=lambda n: len(by[n]))
    here, there = by[src_node], [p for n, ps in by.items() if n != src_node for p in ps]
    assert len(here) >= 2 and there, by
    # w1 and w2 are not neighbours: the overlay carries this over the lab's nodes.
    assert status(w2)["router_id"] not in {x["neighbour"] for x in status(w1)["links"]}
    src = here[0]["metadata"]["name"]
    for peer in there + here[1:]:  # across the mesh, and beside it on the same bridge
        ip = peer["status"]["podIP"]
        out = exec_in(w1, src, f"ping -c 3 -W 5 {ip}")
        assert " 0% packet loss" in out, (peer["spec"]["nodeName"], out)
    # The Service by its name, through the node's cluster DNS and kube-proxy. (The
    # workload is Debian's busybox-static, whose glibc cannot resolve a name itself
    # inside a container, and whose wget 1.35 segfaults even on the host: its
    # nslookup asks the pod's DNS server, and nc fetches the page from the address.)
    service_ip = json.loads(kubectl(w1, "get", "service", WEB, "-o", "json"))["spec"][
        "clusterIP"]
    fqdn = f"{WEB}.default.svc.cluster.local"
    found = exec_in(w1, src, f"nslookup {fqdn}")
    assert re.search(rf"^Name:\s*{re.escape(fqdn)}\s*\nAddress:\s*{re.escape(service_ip)}\s*$",
                     found, re.M), found
    names = {p["metadata"]["name"] for ps in by.values() for p in ps}
    answers = {http_body(exec_in(w1, src, f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | '
                                          f"nc {service_ip} 80")) for _ in range(6)}
    assert answers and answers <= names, answers


def test_the_apiserver_stays_reachable_when_the_nearest_holder_dies(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    c = cluster
    w1 = c.vms["w1"]
    # One path to the anycast address, to the holder at the end of w1's cheaper
    # cable, so its every connection reaches that apiserver: the one killed.
    route = json.loads(w1.ssh(f"ip -6 -j route show {c.site.anycast['apiserver']}").stdout)
    assert len(route) == 1 and "nexthops" not in route[0], route
    nearest = served_by(w1, c)
    assert nearest == c.cables["w1"][0], (nearest, c.cables)
    c.lab.kill(nearest)
    killed = time.monotonic()
    poll("a write through the anycast address again", lambda: kubectl(
        w1, "annotate", "--overwrite", "deployment", WEB,
        f"kubermesh.test/holder-died=n{nearest}", check=False) or None, 120, every=0.5)
    with capsys.disabled():
        print(f"\nkubernetes figures: w1's writes through the anycast address answered "
              f"again {time.monotonic() - killed:.1f} s after n{nearest} died")
    assert served_by(w1, c) in set(c.holders) - {nearest}


def test_a_dead_workers_pods_run_elsewhere(cluster: Cluster,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    c = cluster
    w1, w2 = c.vms["w1"], c.vms["w2"]
    if len(running_on(w1).get(c.nodes["w2"], ())) == 0:
        pytest.skip("needs web pods on w2, which test_pods_spread_… places (run the "
                    "module whole)")
    w2.stop()
    died = time.monotonic()
    all_on(c, "w1", 300)
    with capsys.disabled():
        print(f"\nkubernetes figures: w2's pods Running on w1 "
              f"{time.monotonic() - died:.0f} s after w2 died")
    node = json.loads(kubectl(w1, "get", "node", c.nodes["w2"], "-o", "json"))
    assert any(t["key"] == "node.kubernetes.io/unreachable"
               for t in node["spec"].get("taints", ())), node["spec"]


def test_a_dead_holders_slot_is_taken_over_and_etcd_has_three_members(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """The holder killed above stayed dead: after the site's grace, the lab node that
    held no slot takes it, and etcd is three healthy members again."""
    c = cluster
    dead_holders = [i for i in c.holders if i in c.lab.state.dead]
    if len(dead_holders) != 1:
        pytest.skip("needs the holder that test_the_apiserver_stays_reachable_when_the_"
                    "nearest_holder_dies killed (run the module whole)")
    [dead] = dead_holders
    heir = next(n.index for n in c.lab.state.nodes if n.index not in c.holders)
    now = [i for i in c.holders if i != dead] + [heir]
    took = wait_for(f"n{heir} holding n{dead}'s slot, with etcd on {now}", lambda: (
        [] if kube_states(c.lab).get(heir) == "running" else
        [f"n{heir}: {kube_states(c.lab).get(heir)}"]) + slot_etcd_differs(c.lab, now),
        timeout=c.site.control_plane.grace + 300)
    with capsys.disabled():
        print(f"\nkubernetes figures: n{heir} runs the control plane in n{dead}'s slot, "
              f"etcd on {now} ({took:.0f} s into this test; grace "
              f"{c.site.control_plane.grace} s)")
    poll("w1's Node Ready, through the new control plane", lambda: c.nodes["w1"] in
         ready_nodes(c.vms["w1"]), 120, every=2)
