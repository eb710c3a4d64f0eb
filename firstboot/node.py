"""The node itself: its configuration (validated once, at start), its identity on
the host, its mesh links, and FRR's configuration for them.

    identity  hostname, loopback /128 on lo, forwarding on
    links     every physical NIC not marked not-mesh is a mesh link; not-mesh NICs
              get a DHCP file for networkd (mesh links need none: the image's
              default .network is the mesh policy, from the first instant of boot)
    frr       frr.conf for the links, applied with frr-reload.py: a new cable joins
              OSPFv3 without touching the other adjacencies
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyroute2.netlink.rtnl import RTMGRP_LINK

from firstboot import hardware
from firstboot.files import write_atomic
from firstboot.paths import NodePaths
from firstboot.runtime import Controller
from mesh import networkd
from mesh.frr import FRR_DAEMONS, FRR_RELOAD, link_cost, render_frr_conf
from mesh.plan import HardwareIdentity, NodeIdentity
from mesh.site import Site

log = logging.getLogger("kubermesh.node")


class ConfigError(Exception):
    """The node cannot run with what it was given (site, credentials, hardware)."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything the runtime was started with, checked once."""

    site: Site
    hw: HardwareIdentity
    node: NodeIdentity
    paths: NodePaths
    not_mesh: tuple[str, ...] = ()  # the site's, the options' and the credential's
    virtual_links: bool = False  # lab: veth cables count as mesh links
    set_hostname: bool = True
    frr_log: str = "syslog informational"  # FRR's log target


def credential(paths: NodePaths, name: str) -> str:
    """A credential, the unit's own or the system's (SMBIOS type 11 under QEMU,
    imported by systemd); "" when there is none."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    for d in ([Path(directory)] if directory else []) + list(paths.credentials):
        try:
            return (d / name).read_text()
        except OSError:
            continue
    return ""


def sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    if path.read_text().strip() != value:
        path.write_text(value)


class Identity(Controller):
    name = "identity"
    period = 30.0

    def __init__(self, cfg: NodeConfig, ipr: Any) -> None:
        self.cfg, self.ipr = cfg, ipr

    def reconcile(self) -> bool:
        node = self.cfg.node
        if self.cfg.set_hostname and socket.gethostname() != node.hostname:
            socket.sethostname(node.hostname)
        # Forwarding for the mesh; what may be forwarded is the packet filter's.
        for key in ("net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/forwarding",
                    "net/ipv4/ip_forward"):
            sysctl(key, "1")
        lo = self.ipr.link_lookup(ifname="lo")[0]
        have = {a.get_attr("IFA_ADDRESS") for a in self.ipr.get_addr(index=lo,
                                                                      family=socket.AF_INET6)}
        if str(node.loopback) not in have:
            self.ipr.addr("add", index=lo, address=str(node.loopback), prefixlen=128)
            log.info("loopback %s on lo", node.loopback)
            return True
        return False


@dataclass(frozen=True)
class Link:
    name: str
    carrier: bool
    speed: int | None  # Mb/s, None when the NIC does not say


class LinkSettings(Protocol):
    """What Links needs: a NodeConfig, or a JoinConfig on a node without a site."""

    @property
    def paths(self) -> NodePaths: ...
    @property
    def not_mesh(self) -> tuple[str, ...]: ...
    @property
    def virtual_links(self) -> bool: ...


UDEV_RETRY = 2.0  # seconds between looks while udev is naming NICs (renames wake it)
UDEV_WAIT = 60.0  # a new NIC waits this long at most for udev to name it


class Links(Controller):
    """Which NICs are mesh links, with carrier and speed (sysfs); link events wake it."""

    name = "links"
    period = 5.0
    groups = RTMGRP_LINK

    def __init__(self, cfg: LinkSettings) -> None:
        self.cfg = cfg
        self.links: tuple[Link, ...] = ()
        self.not_mesh: tuple[str, ...] = ()
        self.applied_networkd: dict[str, str] | None = None  # and taken by networkd
        self.reloaded_networkd: dict[str, str] | None = None
        self.confirmed: set[str] = set()  # not-mesh NICs networkd configures from our file
        self.nudged: dict[str, float] = {}  # NIC -> when it was last reconfigured
        self.first_seen: dict[str, float] = {}  # physical NIC present -> since when

    unnamed: tuple[str, ...] = ()  # NICs udev has not finished with yet

    def wants(self, msg: Any) -> bool:
        return msg.get("event") in ("RTM_NEWLINK", "RTM_DELLINK")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(link.name for link in self.links)

    def reconcile(self) -> bool:
        sysfs, udev = self.cfg.paths.sysfs, self.cfg.paths.udev
        found = hardware.nics(sysfs)
        now = time.monotonic()
        present = {n.name for n in found if n.physical}
        self.first_seen = {name: self.first_seen.get(name, now) for name in present}
        # A NIC udev has not finished with is left for later (UDEV_WAIT at most): taken
        # now, it would be configured under its kernel name and again under its
        # lasting one a moment later.
        nics = [n for n in found if not n.physical or now - self.first_seen[n.name] >= UDEV_WAIT
                or hardware.udev_done(udev, sysfs, n.name)]
        self.unnamed = tuple(sorted({n.name for n in found} - {n.name for n in nics}))
        mesh = hardware.mesh_links(nics, self.cfg.not_mesh,
                                   physical_only=not self.cfg.virtual_links)
        links = tuple(Link(n, hardware.carrier(sysfs, n), hardware.speed(sysfs, n))
                      for n in mesh)
        self.not_mesh = tuple(n.name for n in nics if n.physical and n.name not in mesh)
        self._networkd()
        changed = links != self.links
        if {link.name for link in links} != set(self.names):
            old, new = set(self.names), {link.name for link in links}
            log.info("mesh links: %s (+%d -%d)", ", ".join(sorted(new)) or "none",
                     len(new - old), len(old - new), extra={"fields": {"links": ",".join(
                         sorted(new))}})
        self.links = links
        return changed

    def _networkd(self) -> None:
        d = self.cfg.paths.networkd_dir
        if d is None:
            return
        files = networkd.render_networkd(self.not_mesh)
        if files == self.applied_networkd:
            return
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.glob(f"{networkd.PREFIX}*.network"):
            if stale.name not in files:
                stale.unlink()
        for name, text in files.items():
            write_atomic(d / name, text, 0o644, only_if_changed=True)
        # The runtime does not wait for networkd at boot: until it runs, the files
        # wait for it (and a reload then makes sure it read them).
        active = subprocess.run(["systemctl", "is-active", "--quiet", "systemd-networkd"],
                                timeout=30, check=False).returncode == 0
        if not active:
            return
        if files != self.reloaded_networkd:
            _networkctl("reload")
            self.reloaded_networkd = files
        # Read back which file networkd configured each NIC from: a NIC renamed
        # or enumerated while the files changed can keep the mesh default.
        waiting = [nic for nic in self.not_mesh
                   if not self._taken(nic, d / networkd.not_mesh_file(nic))]
        if not waiting:
            self.applied_networkd = files

    def _taken(self, nic: str, file: Path) -> bool:
        """Whether networkd configures nic from file; nudges it when it settled on another."""
        state = self._link_state(nic)
        if state.network_file == str(file):
            if nic not in self.confirmed:
                self.confirmed.add(nic)
                log.info("%s is not a mesh link: networkd configures it (DHCP) from %s",
                         nic, file.name, extra={"fields": {"link": nic}})
            return True
        self.confirmed.discard(nic)
        if state.admin_state in networkd.SETTLED:
            now = time.monotonic()
            if now - self.nudged.get(nic, -NUDGE_EVERY) >= NUDGE_EVERY:
                log.warning("networkd configured %s from %s, not %s: reconfiguring it", nic,
                            state.network_file or "no file", file.name,
                            extra={"fields": {"link": nic}})
                self.nudged[nic] = now
                _networkctl("reconfigure", nic)
        return False

    def _link_state(self, nic: str) -> networkd.LinkState:
        try:
            index = (self.cfg.paths.sysfs / "class/net" / nic / "ifindex").read_text().strip()
            return networkd.parse_link_state(
                (self.cfg.paths.networkd_state / index).read_text())
        except FileNotFoundError:  # the NIC is gone, or networkd has not seen it yet
            return networkd.LinkState()

    def next_run(self) -> float | None:
        if self.unnamed:  # udev may name a NIC without a netlink event: look again soon
            return UDEV_RETRY
        waiting = self.cfg.paths.networkd_dir is not None and self.applied_networkd is None
        return 2.0 if waiting else self.period


NUDGE_EVERY = 10.0  # s between two `networkctl reconfigure` of one NIC


def _networkctl(*args: str) -> None:
    r = subprocess.run(["networkctl", *args], capture_output=True, text=True, timeout=30,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"networkctl {' '.join(args)}: {r.stderr.strip()}")


class Frr(Controller):
    """frr.conf for the mesh links (cost from each NIC's speed), applied when it changes."""

    name = "frr"
    after = ("links",)

    def __init__(self, cfg: NodeConfig, links: Links, daemons_up: Any) -> None:
        """`daemons_up()` -> how many of FRR's daemons answer (0 to all)."""
        self.cfg, self.links, self.daemons_up = cfg, links, daemons_up
        self.speeds: dict[str, int] = {}
        self.applied: str | None = None

    def desired(self) -> str:
        for link in self.links.links:
            # A NIC without carrier reports no speed: keep its last known one, so a
            # pulled cable does not change the link's cost (and reload FRR) twice.
            if link.speed is not None and link.speed > 0:
                self.speeds[link.name] = link.speed
        names = self.links.names
        costs = {n: link_cost(self.speeds.get(n)) for n in names}
        return render_frr_conf(self.cfg.site, self.cfg.node, names,
                               log=f"log {self.cfg.frr_log}", costs=costs)

    def reconcile(self) -> bool:
        if self.applied is None and self.links.unnamed:
            # The first frr.conf, which FRR starts with, waits for udev's names (as long
            # as Links does): written now, it would name eth1 and need a reload for
            # enp0s4 moments later.
            return False
        conf = self.desired()
        if conf == self.applied:
            return False
        path = self.cfg.paths.frr_conf
        write_atomic(path, conf, 0o640, owner="frr", only_if_changed=True)  # the OSPF key
        up = self.daemons_up()
        if 0 < up < len(FRR_DAEMONS):
            self.pending = True
            return False  # FRR is starting: reload once every daemon answers (next_run)
        if up:
            cmd = [str(FRR_RELOAD), "--reload", "--confdir", str(path.parent), str(path),
                   "--vty_socket", str(self.cfg.paths.frr_run),
                   "--rundir", str(self.cfg.paths.frr_run)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            if r.returncode != 0:
                # frr-reload echoes configuration lines: never the key into a log.
                said = (r.stderr or r.stdout).replace(self.cfg.site.secrets.ospf_key, "<key>")
                raise RuntimeError(f"frr-reload failed: {said.strip()[-300:]}")
        # else frr.service starts later and reads the file itself
        self.applied = conf
        self.pending = False
        return True

    pending = False  # a configuration not applied yet, for want of a started FRR

    def settled(self) -> bool:
        # frr.service starts once the runtime is ready: not before frr.conf is there.
        return self.applied is not None

    def next_run(self) -> float | None:
        return 1.0 if self.pending or self.applied is None else None
