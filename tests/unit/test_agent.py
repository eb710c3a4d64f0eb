"""`kubermesh agent`: its configuration, checked once (bad input refused with exit
status 78 and a status that says why), and the status controller that computes
the node's stage from the other controllers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from firstboot import agent, status
from firstboot import overlay as overlay_mod
from firstboot.admission import Admission
from firstboot.agent import EX_CONFIG, Status, configure
from firstboot.anycast import Anycast
from firstboot.clusterdns import ClusterDns
from firstboot.controlplane import Slots
from firstboot.etcd import Etcd, child_runner
from firstboot.eviction import Eviction
from firstboot.kubecontrol import KubeControlPlane
from firstboot.kubelet import Kubelet
from firstboot.node import ConfigError, Links, NodeConfig
from firstboot.ospf import Conflicts, Neighbour, OspfView
from firstboot.overlay import Overlay, Routes
from firstboot.paths import NodePaths
from firstboot.provision import Provision
from firstboot.runtime import Registry, Runtime
from firstboot.status import NodeStatus, Stage
from mesh import plan, pods
from mesh.plan import HardwareIdentity
from mesh.pods import BlockClaim
from mesh.site import new_site_toml
from tests.unit.fakes import Kernel, fake_nic, idle_ospf, node_config

MAC = HardwareIdentity("mac", "02:00:00:00:00:01")


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(new_site_toml("t"))
    return p


def paths(tmp_path: Path, **kw: object) -> NodePaths:
    return replace(NodePaths.under(tmp_path / "state", tmp_path / "frr", tmp_path / "site.toml"),
                   **kw)  # type: ignore[arg-type]


def test_configure_a_good_node(tmp_path: Path, site_file: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "kubermesh.not_mesh").write_text("mgmt*\nwlan0\n")
    (creds / "kubermesh.anycast").write_text("apiserver=tcp://[::1]:6443\n")
    cfg, services = configure(site_file, paths(tmp_path, credentials=(creds,)), MAC,
                              not_mesh=("eno9",), anycast=("etcd=http://[::1]:2379/health",))
    assert cfg.hw == MAC and cfg.node == plan.derive(MAC, cfg.site.mesh.ula)
    assert cfg.not_mesh == ("eno9", "mgmt*", "wlan0")
    assert [(s.name, str(s.probe)) for s in services] == [
        ("etcd", "http://[::1]:2379/health"), ("apiserver", "tcp://[::1]:6443")]


def test_the_units_credentials_come_first(tmp_path: Path, site_file: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    mine, system = tmp_path / "unit", tmp_path / "system"
    for d, text in ((mine, "unit0"), (system, "system0")):
        d.mkdir()
        (d / "kubermesh.not_mesh").write_text(text)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(mine))
    cfg, _ = configure(site_file, paths(tmp_path, credentials=(system,)), MAC)
    assert cfg.not_mesh == ("unit0",)


def test_a_missing_site_file_is_refused_by_name(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"the site file is not valid: cannot read the file "
                                          r"\(No such file or directory\) \(.*nope\.toml\)"):
        configure(missing, paths(tmp_path), MAC)


def test_a_malformed_site_file_is_refused_by_name(tmp_path: Path, site_file: Path) -> None:
    site_file.write_text("version = [\n")
    with pytest.raises(ConfigError, match="the site file is not valid: not valid TOML"):
        configure(site_file, paths(tmp_path), MAC)
    site_file.write_text(new_site_toml("t").replace("dead_interval = 3", "dead_interval = 1"))
    with pytest.raises(ConfigError, match=r"the site file is not valid: .*mesh\.dead_interval"):
        configure(site_file, paths(tmp_path), MAC)


def test_a_bad_anycast_credential_is_refused_by_name(tmp_path: Path, site_file: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "kubermesh.anycast").write_text("dns=tcp://[::1]:53\n")
    with pytest.raises(ConfigError, match=r"anycast services \(credential kubermesh\.anycast\): "
                                          r"'dns=tcp://\[::1\]:53': the site has no anycast "
                                          r"address for 'dns'"):
        configure(site_file, paths(tmp_path, credentials=(creds,)), MAC)
    (creds / "kubermesh.anycast").write_text("etcd=ftp://x:1\n")
    with pytest.raises(ConfigError, match="expected http://, https:// or tcp://"):
        configure(site_file, paths(tmp_path, credentials=(creds,)), MAC)
    with pytest.raises(ConfigError, match="expected name=probe-URL"):
        configure(site_file, paths(tmp_path), MAC, anycast=("etcd",))


def test_no_hardware_identity_is_refused(tmp_path: Path, site_file: Path) -> None:
    sysfs = tmp_path / "sys"
    fake_nic(sysfs, "veth0", "0a:00:00:00:00:01", physical=False, perm=False)
    with pytest.raises(ConfigError, match="no hardware identity"):
        configure(site_file, paths(tmp_path, sysfs=sysfs))
    fake_nic(sysfs, "enp1s0", "52:54:00:00:00:07")
    cfg, _ = configure(site_file, paths(tmp_path, sysfs=sysfs))
    assert cfg.hw == HardwareIdentity("mac", "52:54:00:00:00:07")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """main() sets up the `kubermesh` logger and the umask for the process: put back."""
    logger = logging.getLogger("kubermesh")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
    os.umask(umask)


@pytest.mark.usefixtures("restored_logging")
def test_main_refuses_bad_input_with_78_and_a_status(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    state = tmp_path / "state"
    rc = agent.main(["--site", str(missing), "--state-dir", str(state),
                     "--identity", "mac:02:00:00:00:00:01"])
    assert rc == EX_CONFIG == 78
    st = status.read(state / "status.json")
    assert st.stage == Stage.BOOTING and st.node_id == ""
    (error,) = st.errors
    assert error.startswith("config: the site file is not valid: cannot read the file")
    assert str(missing) in error
    assert not st.stale()
    out = capsys.readouterr()
    assert "error: cannot start: the site file is not valid" in out.out
    assert "Traceback" not in out.out + out.err


# --- the status controller


def status_controller(tmp_path: Path, kernel: Kernel, cfg: NodeConfig | None = None,
                      ) -> tuple[Status, Runtime]:
    cfg = cfg or node_config(tmp_path)
    ospf = idle_ospf(cfg, tmp_path)
    routes = Routes(cfg, kernel)
    overlay = Overlay(cfg, kernel, routes, ospf, lambda _: None)
    rt = Runtime(None)
    links = Links(cfg)
    st = Status(cfg, rt, links=links, ospf=ospf, conflicts=Conflicts(cfg, ospf),
                routes=routes, overlay=overlay, anycast=Anycast([], kernel, rt.post),
                kubelet=Kubelet(cfg, overlay), provision=Provision(cfg, links, ospf, kernel),
                slots=(slots := Slots(cfg, kernel, routes, ospf)),
                etcd=(etcd := Etcd(cfg, slots, ospf, child_runner(cfg))),
                kube=(kube := KubeControlPlane(cfg, slots, etcd, overlay, None)),
                admission=(admit := Admission(cfg, kube, ospf, overlay)),
                eviction=Eviction(cfg, ospf, admit), dns=ClusterDns(cfg, kernel))
    return st, rt


def close(rt: Runtime) -> None:
    os.close(rt._wake_r)
    os.close(rt._wake_w)


def test_the_status_is_computed_from_the_controllers(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kubermesh")
    monkeypatch.setattr(overlay_mod, "SETTLE", 0.0)
    kernel = Kernel()
    st, rt = status_controller(tmp_path, kernel)
    cfg = st.cfg
    sysfs = cfg.paths.sysfs
    fake_nic(sysfs, "enp1s0", "52:54:00:00:00:01")
    fake_nic(sysfs, "enp2s0", "52:54:00:00:00:02", carrier=False)
    st.links.reconcile()
    assert st.reconcile() is True  # booting -> links: the light follows
    assert status.read(cfg.paths.status).stage == Stage.LINKS
    assert st.reconcile() is False  # the same stage

    ula = cfg.site.mesh.ula
    loops = plan.loopback_subnet(ula)
    others = {"10.0.0.2": loops.network_address + 2, "10.0.0.7": loops.network_address + 7}
    adv = {}
    for i, (rid, loopback) in enumerate(others.items()):
        kernel.add_route(loopback, [("fe80::2", 2)])
        claim = BlockClaim(pods.block_at(cfg.site.pods, i), IPv4Address(rid))
        kernel.claim(cfg.site, claim, [("fe80::2", 2)])
        adv[pods.claim_address(ula, claim)] = frozenset({rid})
    kernel.add_route(cfg.site.anycast["apiserver"], [("fe80::2", 2)])
    st.ospf.view = OspfView(neighbours={"enp1s0": Neighbour("10.0.0.2", "Full")},
                            reachable=frozenset(others), in_db=frozenset({*others, "10.0.0.9"}),
                            advertisers=adv)
    st.routes.reconcile()
    st.overlay.reconcile()
    rt.registry = Registry(["links", "overlay", "status"])
    rt.registry.report("links")
    rt.registry.report("overlay", "1 failed: route 10.244.9.0/24 via fe80::2%2: boom")
    st.reconcile()

    s = status.read(cfg.paths.status)
    assert s.stage == Stage.ANYCAST  # the apiserver is routed; no kubelet in this image
    assert s.node_id == cfg.node.node_id and s.router_id == str(cfg.node.router_id)
    assert [(x.name, x.carrier, x.neighbour, x.state) for x in s.links] == [
        ("enp1s0", True, "10.0.0.2", "Full"), ("enp2s0", False, "", "")]
    assert (s.known_nodes, s.routes_to) == (2, 2)
    assert s.known == ("10.0.0.2", "10.0.0.7") and s.unreachable == ("10.0.0.9",)
    assert s.routed == tuple(sorted(str(a) for a in others.values()))
    assert st.overlay.block is not None
    assert s.overlay.block == str(st.overlay.block)
    assert (s.overlay.blocks_known, s.overlay.blocks_routed) == (2, 2)
    assert {a.service: a.state for a in s.anycast} == {"apiserver": "routed",
                                                       "etcd": "unreachable"}
    assert s.errors == ("overlay: 1 failed: route 10.244.9.0/24 via fe80::2%2: boom",)
    assert [(c.name, c.state) for c in s.controllers] == [("links", "ok"), ("overlay", "error")]
    assert s.forged_claims == () and s.kubelet == status.KUBELET_NOT_INSTALLED
    assert not s.stale()
    assert st.line() == "anycast: 2/2 routed; 1 errors"
    assert "stage links -> anycast (2/2 nodes routed)" in caplog.text
    assert caplog.text.count("mesh joined: routes to all 2 other nodes") == 1
    st.reconcile()
    assert caplog.text.count("mesh joined") == 1  # said as it grows, not every pass
    close(rt)


def test_a_restarted_runtime_resumes_from_its_status(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kubermesh")
    kernel = Kernel()
    fresh, rt = status_controller(tmp_path, kernel)
    fresh.resume()  # no status yet: a first run
    assert (fresh.stage, fresh.joined, fresh.conflicts.conflicts) == (Stage.BOOTING, 0, ())
    assert fresh.line() == "starting"
    close(rt)

    cfg = fresh.cfg
    node = cfg.node
    status.write(NodeStatus(node.node_id, node.hostname, str(cfg.hw), str(node.loopback),
                            str(node.router_id), Stage.OVERLAY, known_nodes=3, routes_to=3,
                            conflicts=("another node uses router-id x",)), cfg.paths.status)
    again, rt = status_controller(tmp_path, kernel, cfg)
    again.resume()
    assert (again.stage, again.joined) == (Stage.OVERLAY, 3)
    assert again.conflicts.conflicts == ("another node uses router-id x",)
    assert "resuming at stage overlay" in caplog.text
    close(rt)

    # A status left under another identity, or unreadable, is not taken up.
    other = replace(cfg, node=replace(node, node_id="ffffffffffffffff"))
    stranger, rt = status_controller(tmp_path, kernel, other)
    stranger.resume()
    assert (stranger.stage, stranger.joined, stranger.conflicts.conflicts) == (
        Stage.BOOTING, 0, ())
    close(rt)
    cfg.paths.status.write_text("{")
    broken, rt = status_controller(tmp_path, kernel, cfg)
    broken.resume()
    assert broken.stage == Stage.BOOTING
    close(rt)


def test_an_own_loopback_route_is_not_another_node(tmp_path: Path) -> None:
    kernel = Kernel()
    st, rt = status_controller(tmp_path, kernel)
    kernel.add_route(st.cfg.node.loopback, [("fe80::2", 2)])
    kernel.add_route(IPv6Address(int(st.cfg.site.mesh.ula.network_address) | (3 << 64) | 1),
                     [("fe80::2", 2)])  # in the site, not a loopback
    st.routes.reconcile()
    assert st.compute().routes_to == 0
    close(rt)
