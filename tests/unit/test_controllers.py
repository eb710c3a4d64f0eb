"""The node's own controllers against stand-ins: identity (loopback on lo), mesh
links from a fake sysfs, FRR's configuration for them, the packet filter."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from firstboot import node as node_mod
from firstboot.filter import Filter
from firstboot.node import Frr, Identity, Link, Links
from firstboot.ospf import Neighbour, OspfView
from firstboot.provision import Provision
from mesh.frr import FRR_RELOAD, UNKNOWN_SPEED_COST, link_cost
from mesh.networkd import PREFIX
from tests.unit.fakes import Kernel, fake_nic, idle_ospf, link_msg, node_config


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    s = tmp_path / "sys"
    fake_nic(s, "lo", "00:00:00:00:00:00", physical=False)
    fake_nic(s, "enp1s0", "52:54:00:00:00:01", speed=10000)
    fake_nic(s, "enp2s0", "52:54:00:00:00:02", speed=1000)
    fake_nic(s, "enp3s0", "52:54:00:00:00:03", carrier=False)
    fake_nic(s, "mgmt0", "52:54:00:00:00:04", speed=1000)
    fake_nic(s, "veth0", "0a:00:00:00:00:01", physical=False, perm=False)
    return s


def test_identity_puts_the_loopback_on_lo(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    set_ = []
    monkeypatch.setattr(node_mod, "sysctl", lambda k, v: set_.append((k, v)))
    named: list[str] = []
    monkeypatch.setattr(socket, "sethostname", named.append)
    kernel = Kernel()
    cfg = node_config(tmp_path)
    ident = Identity(cfg, kernel)
    assert ident.reconcile() is True
    assert kernel.addrs == {(str(cfg.node.loopback), 128)}
    assert ("net/ipv6/conf/all/forwarding", "1") in set_ and ("net/ipv4/ip_forward", "1") in set_
    assert named == ([cfg.node.hostname] if socket.gethostname() != cfg.node.hostname else [])
    assert ident.reconcile() is False  # there already
    named.clear()
    quiet = Identity(node_config(tmp_path, set_hostname=False), Kernel())
    quiet.reconcile()
    assert named == []


def test_links_are_physical_nics_minus_not_mesh(tmp_path: Path, sysfs: Path) -> None:
    links = Links(node_config(tmp_path, not_mesh=("mgmt*",)))
    assert links.wants(link_msg()) and links.wants(link_msg("RTM_DELLINK"))
    assert not links.wants({"event": "RTM_NEWROUTE"})
    assert links.reconcile() is True
    assert links.links == (Link("enp1s0", True, 10000), Link("enp2s0", True, 1000),
                           Link("enp3s0", False, None))
    assert links.names == ("enp1s0", "enp2s0", "enp3s0")
    assert links.not_mesh == ("mgmt0",)
    assert links.reconcile() is False
    (sysfs / "class/net/enp3s0/carrier").write_text("1\n")  # a cable plugged in
    assert links.reconcile() is True and links.links[2].carrier
    # The lab: veth cables count as mesh links.
    lab = Links(node_config(tmp_path, not_mesh=("mgmt*", "52:54:00:00:00:0[23]"),
                            virtual_links=True))
    lab.reconcile()
    assert lab.names == ("enp1s0", "veth0")
    assert lab.not_mesh == ("enp2s0", "enp3s0", "mgmt0")


def test_a_nic_udev_has_not_named_yet_waits(tmp_path: Path, sysfs: Path) -> None:
    """At boot the runtime can see eth1 before udev renames it enp0s4: only NICs with
    udev's database entry count (where udev runs), and it looks again soon."""
    udev = tmp_path / "udev"
    (udev / "data").mkdir(parents=True)
    links = Links(node_config(tmp_path, not_mesh=("mgmt*",), paths={"udev": udev}))

    def seen() -> tuple[tuple[str, ...], tuple[str, ...]]:
        links.reconcile()
        return links.names, links.unnamed

    def named(*nics: str) -> None:
        for nic in nics:
            udev_named(udev, sysfs, nic)

    # No udevd (no control socket): every NIC counts, as in the lab.
    assert seen() == (("enp1s0", "enp2s0", "enp3s0"), ())
    (udev / "control").touch()
    assert seen() == ((), ("enp1s0", "enp2s0", "enp3s0", "mgmt0"))  # veth0: not udev's
    assert links.next_run() == node_mod.UDEV_RETRY
    named("enp1s0", "enp3s0", "mgmt0")
    # The initrd's entry, or one for a rename to come, is not udev done with it.
    udev_named(udev, sysfs, "enp2s0", link_file=False)
    assert seen() == (("enp1s0", "enp3s0"), ("enp2s0",))
    udev_named(udev, sysfs, "enp2s0", as_name="enp0s2")
    assert seen() == (("enp1s0", "enp3s0"), ("enp2s0",))
    named("enp2s0")
    assert seen() == (("enp1s0", "enp2s0", "enp3s0"), ())
    assert links.next_run() == links.period
    # A NIC udev never finishes with is taken after UDEV_WAIT.
    fake_nic(sysfs, "eth9", "52:54:00:00:00:09")
    assert seen() == (("enp1s0", "enp2s0", "enp3s0"), ("eth9",))
    links.first_seen["eth9"] -= node_mod.UDEV_WAIT
    assert seen() == (("enp1s0", "enp2s0", "enp3s0", "eth9"), ())
    # Only physical NICs present are remembered: a name seen again waits again.
    shutil.rmtree(sysfs / "class/net/eth9")
    assert seen()[0] == ("enp1s0", "enp2s0", "enp3s0") and "eth9" not in links.first_seen
    assert "veth0" not in links.first_seen
    fake_nic(sysfs, "eth9", "52:54:00:00:00:09")
    assert seen() == (("enp1s0", "enp2s0", "enp3s0"), ("eth9",))


def udev_named(udev: Path, sysfs: Path, nic: str, link_file: bool = True,
               as_name: str | None = None) -> None:
    """udev's database entry for the NIC, as udevd writes it once done."""
    index = (sysfs / "class/net" / nic / "ifindex").read_text().strip()
    lines = ["I:94489486", "E:ID_NET_NAMING_SCHEME=v252", "E:ID_NET_DRIVER=virtio_net",
             *(["E:ID_NET_LINK_FILE=/usr/lib/systemd/network/99-default.link"] if link_file
               else []), f"E:ID_NET_NAME={as_name or nic}", "G:systemd"]
    (udev / "data" / f"n{index}").write_text("\n".join(lines) + "\n")


def test_not_mesh_nics_get_networkd_files(tmp_path: Path, sysfs: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    rc = {"is-active": 0, "reload": 0}
    netif = tmp_path / "netif"
    netif.mkdir()

    def networkd_took(nic: str, file: str, state: str = "configured") -> None:
        index = (sysfs / "class/net" / nic / "ifindex").read_text().strip()
        (netif / index).write_text(f"ADMIN_STATE={state}\nOPER_STATE=routable\n"
                                   f"NETWORK_FILE={file}\n")

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        code = rc["is-active"] if cmd[0] == "systemctl" else rc["reload"]
        return subprocess.CompletedProcess(cmd, code, "", "networkd is down")

    monkeypatch.setattr(subprocess, "run", run)
    d = tmp_path / "network"
    d.mkdir()
    (d / f"{PREFIX}not-mesh-old0.network").write_text("stale")
    (d / "50-other.network").write_text("not ours")
    links = Links(node_config(tmp_path, not_mesh=("mgmt*",),
                              paths={"networkd_dir": d, "networkd_state": netif}))
    ours = str(d / f"{PREFIX}not-mesh-mgmt0.network")
    # networkd not running yet (the runtime does not wait for it at boot): the
    # files are written, and reloaded into it once it runs.
    rc["is-active"] = 3
    links.reconcile()
    assert sorted(p.name for p in d.iterdir()) == [f"{PREFIX}not-mesh-mgmt0.network",
                                                   "50-other.network"]
    assert "Name=mgmt0" in (d / f"{PREFIX}not-mesh-mgmt0.network").read_text()
    assert ["networkctl", "reload"] not in calls and links.next_run() == 2.0
    rc["is-active"] = 0
    calls.clear()
    links.reconcile()
    assert calls[-1] == ["networkctl", "reload"]
    # Read back: until networkd says it configures mgmt0 from our file, the
    # controller keeps looking; while the link is pending it only waits.
    assert links.next_run() == 2.0
    networkd_took("mgmt0", "", state="pending")
    links.reconcile()
    assert calls.count(["networkctl", "reload"]) == 1  # unchanged: not reloaded again
    assert ["networkctl", "reconfigure", "mgmt0"] not in calls
    # It settled on the mesh default (e.g. renamed while the files changed): nudged,
    # once per NUDGE_EVERY, however often the controller runs.
    networkd_took("mgmt0", "/usr/lib/systemd/network/80-kubermesh-mesh.network")
    links.reconcile()
    links.reconcile()
    assert calls.count(["networkctl", "reconfigure", "mgmt0"]) == 1
    assert links.next_run() == 2.0
    networkd_took("mgmt0", ours, state="configuring")
    links.reconcile()
    assert links.next_run() == links.period and "mgmt0" in links.confirmed
    calls.clear()
    links.reconcile()
    assert calls == []  # applied and taken: nothing to do
    fake_nic(sysfs, "mgmt1", "52:54:00:00:00:05")
    rc["reload"] = 1
    with pytest.raises(RuntimeError, match="networkctl reload: networkd is down"):
        links.reconcile()
    rc["reload"] = 0
    networkd_took("mgmt1", str(d / f"{PREFIX}not-mesh-mgmt1.network"))
    links.reconcile()  # retried: the files are applied once networkd takes them
    assert calls.count(["networkctl", "reload"]) == 2
    assert (d / f"{PREFIX}not-mesh-mgmt1.network").exists()
    assert links.applied_networkd is not None and links.next_run() == links.period


def links_and_frr(tmp_path: Path, up: list[int]) -> tuple[Links, Frr]:
    cfg = node_config(tmp_path, not_mesh=("mgmt*",), frr_log="file /tmp/frr.log")
    links = Links(cfg)
    links.reconcile()
    return links, Frr(cfg, links, lambda: up[0])


def costs(conf: str) -> dict[str, int]:
    out, link = {}, ""
    for line in conf.splitlines():
        if line.startswith("interface "):
            link = line.split()[1]
        elif line.strip().startswith("ipv6 ospf6 cost "):
            out[link] = int(line.split()[-1])
    return out


def test_frr_renders_the_links_with_costs_from_their_speeds(tmp_path: Path,
                                                            sysfs: Path) -> None:
    links, frr = links_and_frr(tmp_path, [0])
    conf = frr.desired()
    assert "log file /tmp/frr.log" in conf
    assert f"ospf6 router-id {frr.cfg.node.router_id}" in conf
    assert costs(conf) == {"enp1s0": link_cost(10000), "enp2s0": link_cost(1000),
                           "enp3s0": UNKNOWN_SPEED_COST}
    assert costs(conf)["enp1s0"] < costs(conf)["enp2s0"]
    # A pulled cable reports no speed: its cost stays what it was.
    (sysfs / "class/net/enp1s0/carrier").write_text("0\n")
    (sysfs / "class/net/enp1s0/speed").unlink()
    links.reconcile()
    assert frr.desired() == conf


def test_the_first_frr_conf_waits_for_udev_to_name_the_nics(tmp_path: Path,
                                                            sysfs: Path) -> None:
    """FRR starts with the first frr.conf: it waits (a bounded time) until udev has
    named every NIC, not to be reloaded for new names at once."""
    udev = tmp_path / "udev"
    (udev / "data").mkdir(parents=True)
    (udev / "control").touch()
    cfg = node_config(tmp_path, not_mesh=("mgmt*",), paths={"udev": udev})
    links = Links(cfg)
    frr = Frr(cfg, links, lambda: 0)
    links.reconcile()
    assert frr.reconcile() is False and not cfg.paths.frr_conf.exists()
    assert frr.next_run() == 1.0
    for nic in ("enp1s0", "enp2s0", "enp3s0", "mgmt0"):
        udev_named(udev, sysfs, nic)
    links.reconcile()
    assert frr.reconcile() is True
    assert costs(cfg.paths.frr_conf.read_text()).keys() == {"enp1s0", "enp2s0", "enp3s0"}


def test_frr_writes_its_file_and_reloads_a_running_frr(tmp_path: Path, sysfs: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    answer: dict[str, Any] = {"out": "", "rc": 0}

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, answer["rc"], answer["out"], "")

    monkeypatch.setattr(subprocess, "run", run)
    up = [0]
    links, frr = links_and_frr(tmp_path, up)
    path = frr.cfg.paths.frr_conf
    # FRR not running: the file is all (frr.service reads it when it starts).
    assert frr.reconcile() is True
    assert path.read_text() == frr.desired() and path.stat().st_mode & 0o777 == 0o640
    assert calls == [] and frr.next_run() is None
    assert frr.reconcile() is False
    # A new cable while FRR starts (some daemons answer): reloaded once all do.
    fake_nic(sysfs, "enp4s0", "52:54:00:00:00:06")
    links.reconcile()
    up[0] = 1
    assert frr.reconcile() is False and calls == []
    assert "interface enp4s0" in path.read_text()
    up[0] = 3
    assert frr.reconcile() is True
    (cmd,) = calls
    assert cmd[:3] == [str(FRR_RELOAD), "--reload", "--confdir"] and str(path) in cmd
    # A failed reload is an error that never shows the OSPF key.
    fake_nic(sysfs, "enp5s0", "52:54:00:00:00:07")
    links.reconcile()
    key = frr.cfg.site.secrets.ospf_key
    answer.update(out=f"line 12: authentication key-id 1 hash-algo hmac-sha-256 key {key}",
                  rc=1)
    with pytest.raises(RuntimeError, match=r"frr-reload failed: .*key <key>") as e:
        frr.reconcile()
    assert key not in str(e.value)


def test_a_change_while_frr_starts_is_retried_soon(tmp_path: Path, sysfs: Path) -> None:
    up = [0]
    links, frr = links_and_frr(tmp_path, up)
    frr.reconcile()
    fake_nic(sysfs, "enp4s0", "52:54:00:00:00:06")
    links.reconcile()
    up[0] = 1
    assert frr.reconcile() is False
    assert frr.next_run() is not None


def fake_nft(tmp_path: Path) -> Path:
    """An `nft` that keeps the script it was given (the table exists while it does)."""
    script = tmp_path / "nft"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {tmp_path}/nft.log
if [ "$1" = list ]; then test -f {tmp_path}/table; exit $?; fi
if [ -f {tmp_path}/fail ]; then echo "Error: syntax error" >&2; exit 1; fi
cat > {tmp_path}/table
""")
    script.chmod(0o755)
    return script


def test_the_filter_follows_links_and_full_adjacencies(tmp_path: Path, sysfs: Path) -> None:
    cfg = node_config(tmp_path, not_mesh=("mgmt*",))
    links = Links(cfg)
    links.reconcile()
    ospf = idle_ospf(cfg, tmp_path)
    f = Filter(links, ospf, Provision(cfg, links, ospf, ipr=None), nft=str(fake_nft(tmp_path)))
    table = tmp_path / "table"
    assert f.reconcile() is True
    assert f.spec.mesh_links == ("enp1s0", "enp2s0", "enp3s0") and not f.spec.full_links
    assert table.read_text() == f.applied
    assert f.reconcile() is False  # in place, unchanged
    ospf.view = OspfView(neighbours={"enp2s0": Neighbour("10.0.0.2", "Full"),
                                     "enp1s0": Neighbour("10.0.0.3", "ExStart"),
                                     "wlan0": Neighbour("10.0.0.4", "Full")})  # not mesh
    assert f.reconcile() is True
    assert f.spec.full_links == ("enp2s0",)
    table.unlink()  # someone flushed the ruleset
    assert f.reconcile() is True and table.exists()
    (tmp_path / "fail").touch()
    ospf.view = OspfView()
    with pytest.raises(RuntimeError, match="nft -f: Error: syntax error"):
        f.reconcile()
    assert list(f.spec.full_links) == ["enp2s0"]  # what is applied, still
