"""The Kubernetes control plane of a slot holder: its command lines, and the
controller that issues its certificates and runs it only while the node holds a
slot, its etcd member runs, and the node is large enough."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest

from firstboot import kubecontrol as controller
from firstboot.anycast import Probe
from firstboot.controlplane import Slots
from firstboot.etcd import Etcd
from firstboot.kubecontrol import KubeControlPlane
from firstboot.overlay import Overlay, Routes
from mesh import kubecontrol
from mesh.kubecontrol import COMPONENTS, Component
from tests.unit.fakes import Kernel, idle_ospf, node_config
from tests.unit.test_etcd import FakeRunner

LOOPBACK = IPv6Address("fd00:1::aaaa:aaaa:aaaa:aaaa")


def test_command_lines(tmp_path: Path) -> None:
    cfg = node_config(tmp_path)
    api, cm, sched = kubecontrol.components(
        cfg.site, LOOPBACK, IPv4Address("10.244.3.1"),
        "http://[fd00:1::a]:2379", Path("/pki"))
    assert [c.name for c in (api, cm, sched)] == list(COMPONENTS)
    # IPv4 advertised: the kubernetes service's family; every address listened on.
    assert "--advertise-address=10.244.3.1" in api.args and "--bind-address=::" in api.args
    assert "--etcd-servers=http://[fd00:1::a]:2379" in api.args  # its own member alone
    assert f"--service-cluster-ip-range={cfg.site.services.range}" in api.args
    assert "--tls-cert-file=/pki/apiserver.crt" in api.args
    # The mesh gives pod blocks: the controller-manager allocates none.
    assert "--allocate-node-cidrs=false" in cm.args
    assert "--kubeconfig=/pki/scheduler.conf" in sched.args
    for c in (api, cm, sched):
        kubecontrol.check_args(c)
    with pytest.raises(ValueError, match="survive"):
        kubecontrol.check_args(Component("x", ("--a=b c",)))
    assert kubecontrol.readiness_url(LOOPBACK) == f"https://[{LOOPBACK}]:6443/readyz"


def test_a_node_smaller_than_kubeadm_asks_runs_no_control_plane() -> None:
    assert kubecontrol.too_small(2, 1700) is None
    assert "1 CPU, 1024 MiB" in (kubecontrol.too_small(1, 1024) or "")


class Node:
    def __init__(self, tmp_path: Path) -> None:
        cfg = node_config(tmp_path, router_id=IPv4Address("10.0.0.1"))
        bins = tmp_path / "bin"
        bins.mkdir()
        for c in COMPONENTS:
            (bins / c).touch()
        self.cfg = replace(cfg, paths=replace(cfg.paths, kube_bin_dir=bins))
        kernel = Kernel()
        ospf = idle_ospf(self.cfg, tmp_path)
        routes = Routes(self.cfg, kernel)
        self.slots = Slots(self.cfg, kernel, routes, ospf)
        self.etcd = Etcd(self.cfg, self.slots, ospf, FakeRunner())
        self.overlay = Overlay(self.cfg, kernel, routes, ospf, lambda _: None)
        self.runners = {c: FakeRunner() for c in COMPONENTS}
        self.kube = KubeControlPlane(self.cfg, self.slots, self.etcd, self.overlay,
                                     dict(self.runners))
        self.kube.probe = Probe.parse("tcp://[::1]:1")  # nothing listens: refused at once


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    monkeypatch.setattr(KubeControlPlane, "capacity", staticmethod(lambda: (2, 4096)))
    return Node(tmp_path)


def test_runs_only_on_a_slot_holder_with_etcd(node: Node,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    k = node.kube
    pki_dir = node.cfg.paths.kube_pki
    k.reconcile()
    assert k.state == "no slot" and not any(r.running() for r in node.runners.values())
    node.slots.slot = 0
    k.reconcile()
    assert k.state.startswith("waiting for etcd")
    node.etcd.state = "running"
    k.reconcile()
    assert k.state.startswith("waiting for a pod block")
    node.overlay.block = IPv4Network("10.244.3.0/24")
    k.reconcile()
    assert k.state.startswith("starting (")  # nothing answers at its loopback here
    assert all(r.running() for r in node.runners.values())
    api = node.runners["kube-apiserver"].env or {}
    assert "--advertise-address=10.244.3.1" in api["ARGS"].split()
    # Its certificates: issued once, keys for root alone.
    assert pki_dir.stat().st_mode & 0o777 == 0o700
    assert (pki_dir / "sa.key").stat().st_mode & 0o777 == 0o600
    issued = (pki_dir / "apiserver.crt").read_text()
    k.reconcile()
    assert (pki_dir / "apiserver.crt").read_text() == issued
    assert all(r.stopped == 0 for r in node.runners.values())
    # A changed command line restarts that process only.
    node.overlay.block = IPv4Network("10.244.4.0/24")
    k.reconcile()
    assert node.runners["kube-apiserver"].stopped == 1
    assert node.runners["kube-scheduler"].stopped == 0
    # Without its slot: everything stops and the keys go.
    node.slots.slot = None
    k.reconcile()
    assert k.state == "no slot" and not any(r.running() for r in node.runners.values())
    assert not pki_dir.exists()


def test_a_small_holder_says_so(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KubeControlPlane, "capacity", staticmethod(lambda: (1, 1024)))
    node.slots.slot = 0
    node.etcd.state = "running"
    node.kube.reconcile()
    assert "too small" in node.kube.state
    assert not any(r.running() for r in node.runners.values())


def test_not_installed(node: Node) -> None:
    (node.cfg.paths.kube_bin_dir / "kube-scheduler").unlink()
    node.slots.slot = 0
    node.kube.reconcile()
    assert node.kube.state.startswith("not installed") and "kube-scheduler" in node.kube.state
    assert controller.UNIT.format("kube-apiserver") == \
        "kubermesh-control-plane@kube-apiserver.service"
