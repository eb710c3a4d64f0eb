"""The node agent's pure parts and its edges: sysfs, status, systemd protocols."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from firstboot import agent, hardware, networkd, systemd
from firstboot.status import (
    AnycastStatus,
    LinkStatus,
    NodeStatus,
    OverlayStatus,
    Stage,
    read,
    render,
    stage_of,
    write,
)
from mesh import plan
from mesh.plan import HardwareIdentity
from mesh.site import new_site_toml


def fake_nic(sysfs: Path, name: str, mac: str, physical: bool = True, perm: bool = True,
             carrier: bool = True) -> None:
    d = sysfs / "class" / "net" / name
    d.mkdir(parents=True)
    (d / "address").write_text(mac + "\n")
    (d / "addr_assign_type").write_text("0\n" if perm else "3\n")
    (d / "carrier").write_text("1\n" if carrier else "0\n")
    if physical:
        (d / "device").mkdir()


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    fake_nic(tmp_path, "lo", "00:00:00:00:00:00", physical=False)
    fake_nic(tmp_path, "enp1s0", "52:54:00:00:00:22")
    fake_nic(tmp_path, "enp2s0", "52:54:00:00:00:11")
    fake_nic(tmp_path, "mgmt0", "52:54:00:00:00:01")
    fake_nic(tmp_path, "veth0", "0a:00:00:00:00:01", physical=False, perm=False)
    fake_nic(tmp_path, "usb0", "02:00:00:00:00:99", perm=False)  # random MAC: not identity
    return tmp_path


def test_identity_from_dmi_else_lowest_permanent_physical_mac(sysfs: Path) -> None:
    assert hardware.identity(sysfs) == HardwareIdentity("mac", "52:54:00:00:00:01")
    dmi = sysfs / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text("03000200-0400-0500-0006-000700080009\n")  # bogus
    assert hardware.identity(sysfs).kind == "mac"
    (dmi / "product_uuid").write_text("9A3F0E1C-1111-4C2B-8D3E-0123456789AB\n")
    assert hardware.identity(sysfs) == HardwareIdentity("dmi",
                                                        "9a3f0e1c-1111-4c2b-8d3e-0123456789ab")


def test_mesh_links_are_physical_nics_minus_not_mesh(sysfs: Path) -> None:
    nics = hardware.nics(sysfs)
    assert hardware.mesh_links(nics, []) == ["enp1s0", "enp2s0", "mgmt0", "usb0"]
    assert hardware.mesh_links(nics, ["mgmt*"]) == ["enp1s0", "enp2s0", "usb0"]
    assert hardware.mesh_links(nics, ["52:54:00:00:00:1?"]) == ["enp1s0", "mgmt0", "usb0"]
    assert "veth0" in hardware.mesh_links(nics, [], physical_only=False)


def link(name: str, carrier: bool = True, state: str = "") -> LinkStatus:
    return LinkStatus(name, carrier, "10.0.0.1" if state else "", state)


def test_stages() -> None:
    assert stage_of((), 0, 0) == Stage.BOOTING
    assert stage_of((link("a", carrier=False),), 0, 0) == Stage.BOOTING
    assert stage_of((link("a"),), 0, 0) == Stage.LINKS
    assert stage_of((link("a", state="ExStart"),), 0, 0) == Stage.LINKS
    assert stage_of((link("a", state="Full"),), 3, 2) == Stage.ADJACENCIES
    assert stage_of((link("a", state="Full"), link("b")), 3, 3) == Stage.ROUTES
    full = (link("a", state="Full"),)
    held = OverlayStatus("10.244.3.0/24", "10.244.3.1", blocks_known=3, blocks_routed=3)
    assert stage_of(full, 3, 3, OverlayStatus(blocks_known=3)) == Stage.ROUTES
    assert stage_of(full, 3, 3, replace(held, blocks_routed=2)) == Stage.ROUTES
    assert stage_of(full, 3, 3, held, "unreachable") == Stage.OVERLAY
    assert stage_of(full, 3, 3, held, "routed") == Stage.ANYCAST
    assert stage_of(full, 3, 3, held, "local", "activating") == Stage.ANYCAST
    assert stage_of(full, 3, 3, held, "routed", "active") == Stage.KUBELET
    # A stage is never reached past a missing earlier one.
    assert stage_of(full, 3, 2, held, "routed", "active") == Stage.ADJACENCIES


def test_status_round_trip_and_render(tmp_path: Path) -> None:
    st = NodeStatus("ab" * 8, "km-abababababab", "mac:52:54:00:00:00:01", "fd00::1",
                    "10.1.2.3", Stage.ADJACENCIES, (link("enp1s0", state="Full"),
                                                    link("enp2s0", carrier=False)),
                    known_nodes=3, routes_to=2, conflicts=("another node uses router-id x",),
                    overlay=OverlayStatus("10.244.3.0/24", "10.244.3.1", 3, 2),
                    anycast=(AnycastStatus("apiserver", "fd00:0:0:1::1", "unreachable"),))
    write(st, tmp_path / "s.json")
    assert read(tmp_path / "s.json") == st
    text = render(st)
    assert "stage     adjacencies" in text and "routes    to 2 of 3" in text
    assert "enp2s0" in text and "no carrier" in text and "CONFLICT" in text
    assert "overlay   block 10.244.3.0/24 (node 10.244.3.1); 2 of 3 other blocks routed" in text
    assert "anycast   apiserver  fd00:0:0:1::1 unreachable" in text
    assert "kubelet   not installed" in text


def test_node_env_and_anycast_env() -> None:
    node = plan.derive(HardwareIdentity("mac", "52:54:00:00:00:01"),
                       IPv6Network("fd12:3456:789a::/48"))
    env = dict(line.split("=", 1) for line in agent.node_env(node).splitlines())
    assert env == {"KUBERMESH_NODE_ID": node.node_id, "KUBERMESH_HOSTNAME": node.hostname,
                   "KUBERMESH_LOOPBACK": str(node.loopback),
                   "KUBERMESH_ROUTER_ID": str(node.router_id)}
    assert agent.anycast_env(["etcd=http://[::1]:2379/health", "apiserver=tcp://[::1]:6443"]) == (
        "KUBERMESH_ANYCAST_SERVICES=--service etcd=http://[::1]:2379/health "
        "--service apiserver=tcp://[::1]:6443\n")
    for bad in ("etcd", "=http://x", "etcd=http://$HOME/", "etcd="):
        with pytest.raises(ValueError, match=r"kubermesh\.anycast"):
            agent.anycast_env([bad])


def test_sd_notify_and_watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify(READY="1") is False
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify(READY="1", STATUS="links")
        assert server.recv(4096) == b"READY=1\nSTATUS=links"
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None


def test_journal_fields() -> None:
    assert systemd._field("A", "b") == b"A=b\n"
    assert systemd._field("A", "x\ny") == b"A\n" + (3).to_bytes(8, "little") + b"x\ny\n"


def test_networkd_files() -> None:
    files = networkd.render(["enp1s0"], ["mgmt0"])
    mesh = files["40-kubermesh-mesh-enp1s0.network"]
    assert "Name=enp1s0" in mesh and "IPv6AcceptRA=no" in mesh and "DHCP=no" in mesh
    assert "LinkLocalAddressing=ipv6" in mesh
    assert "DHCP=yes" in files["40-kubermesh-other-mgmt0.network"]
    assert len(files) == 2


def test_a_restarted_agent_resumes_from_its_status(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site.toml"
    site.write_text(new_site_toml("t"))
    opts = agent.Options(site_file=site, frr_dir=tmp_path, status_file=tmp_path / "status.json",
                         identity=HardwareIdentity("mac", "52:54:00:00:00:01"))
    fresh = agent.Agent(opts)
    fresh.resume()  # no status yet: a first run
    assert (fresh.stage, fresh.joined, fresh.in_conflict) == (Stage.BOOTING, 0, False)

    node = fresh.node
    write(NodeStatus(node.node_id, node.hostname, "mac:52:54:00:00:00:01", str(node.loopback),
                     str(node.router_id), Stage.OVERLAY, known_nodes=3, routes_to=3,
                     conflicts=("another node uses router-id x",)), opts.status_file)
    again = agent.Agent(opts)
    again.resume()
    assert (again.stage, again.joined, again.in_conflict) == (Stage.OVERLAY, 3, True)
    assert again.conflict[0] == ("another node uses router-id x",)
    assert "resuming at stage overlay" in capsys.readouterr().out

    # A status left under another identity is not taken up.
    other = agent.Agent(replace(opts, identity=HardwareIdentity("mac", "52:54:00:00:00:02")))
    other.resume()
    assert (other.stage, other.joined, other.in_conflict) == (Stage.BOOTING, 0, False)


def test_spf_tree_routers() -> None:
    tree = ("+-217.12.200.96 [0]\n"
            "   +-89.195.106.186 [100]\n"
            "   |  +-130.25.188.211 [200]\n"
            "   |     +-15.127.174.86 [300]\n"
            "   +-212.154.56.88 [100]\n"
            "      +-216.89.78.69 [200]\n")
    assert agent.spf_tree_routers(tree) == {
        "217.12.200.96", "89.195.106.186", "130.25.188.211", "15.127.174.86",
        "212.154.56.88", "216.89.78.69"}
    assert agent.spf_tree_routers("") == set()


def test_status_names_unreachable_routers(tmp_path: Path) -> None:
    st = NodeStatus("ab" * 8, "km-abababababab", "mac:52:54:00:00:00:01", "fd00::1",
                    "10.1.2.3", Stage.ROUTES, (link("enp1s0", state="Full"),),
                    known_nodes=1, routes_to=1, unreachable=("10.9.9.9",))
    write(st, tmp_path / "s.json")
    assert read(tmp_path / "s.json") == st
    assert "routes    to 1 of 1 other nodes; 1 more unreachable (10.9.9.9)" in render(st)
