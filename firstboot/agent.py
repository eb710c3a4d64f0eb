"""The node agent: from hardware identity to a routing mesh node, on every boot.

One loop, a few small controllers (Talos-style), each reconciling desired state
into the kernel or FRR and reporting, never blocking the others:
  identity   node id, hostname, loopback /128 on lo, forwarding on
  links      every physical NIC not marked not-mesh: up, link-local only, no RAs
  frr        frr.conf rendered by mesh.frr for the current links; applied with
             frr-reload.py, so a new cable joins OSPFv3 without touching the
             other adjacencies
  observe    adjacencies, routes, the link-state database; identity conflicts
  status     one status file, stage changes to the journal and console

Safe to rerun and to restart: everything is derived again from the hardware,
the site and the kernel; nothing is remembered but the status it last wrote.
Netlink link/address events wake the loop; otherwise it runs every PERIOD (2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import select
import shutil
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from firstboot import hardware, networkd, status
from firstboot.overlay import RTPROT_KUBERMESH
from firstboot.status import AnycastStatus, LinkStatus, NodeStatus, OverlayStatus, Stage
from firstboot.systemd import log, notify, watchdog_interval
from firstboot.vty import Vty, VtyError
from mesh import plan, pods
from mesh.frr import FRR_RELOAD, link_cost, render_frr_conf
from mesh.plan import HardwareIdentity, NodeIdentity
from mesh.site import Site, load_site

# The own Router-LSA is re-originated at most every few seconds in a sane mesh;
# a node fighting another with the same router-id re-originates it constantly.
LSA_WAR_WINDOW = 30.0
LSA_WAR_BUMPS = 60
# Seconds between rounds when no link or address event comes sooner. Each round
# reads routes and asks ospf6d twice; on an emulated node that is not free.
PERIOD = 2.0
# A link to this router-id that this node lacks, in most rounds of this many
# seconds (at least ten dead intervals, and PHANTOM_ROUNDS rounds), is a conflict.
PHANTOM_WINDOW = 30.0
PHANTOM_ROUNDS = 8
CONFLICT_HOLD = 120.0  # seconds a conflict stays reported after its last evidence
KUBELET_UNIT = "kubermesh-kubelet.service"
# The node's identity for the units that follow the agent (overlay, kubelet).
NODE_ENV = Path("/run/kubermesh/node.env")
# The anycast services this node runs, for kubermesh-anycast.service; present
# only on nodes that run any (the credential kubermesh.anycast, one
# name=probe-URL per line, e.g. etcd=http://[::1]:2379/health).
ANYCAST_ENV = Path("/run/kubermesh/anycast.env")


@dataclass(frozen=True)
class Options:
    site_file: Path
    frr_dir: Path  # where frr.conf is written (/etc/frr resolves there in the image)
    status_file: Path
    sysfs: Path = Path("/sys")
    identity: HardwareIdentity | None = None  # override (lab nodes have no DMI)
    virtual_links: bool = False  # lab: veth cables count as mesh links
    not_mesh: tuple[str, ...] = ()  # besides the site's (e.g. from a credential)
    vty_socket: Path | None = None
    frr_run_dir: Path | None = None
    set_hostname: bool = True
    log_file: str = "syslog informational"
    networkd_dir: Path | None = None  # the image: /run/systemd/network; the lab: none
    env_dir: Path | None = None  # where node.env and anycast.env go (the image: /run/kubermesh)
    kubelet_binary: Path = Path("/usr/bin/kubelet")


_SPF_NODE = re.compile(r"\+-(\d{1,3}(?:\.\d{1,3}){3}) \[")


def spf_tree_routers(text: str) -> set[str]:
    """Router-ids in `show ipv6 ospf6 spf tree`: "+-10.0.0.1 [100]" per node, the
    root first, children indented under "|" rules."""
    return set(_SPF_NODE.findall(text))


class Agent:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.site: Site = load_site(opts.site_file)
        ident = opts.identity or hardware.identity(opts.sysfs)
        self.hw = ident
        self.node: NodeIdentity = plan.derive(ident, self.site.mesh.ula)
        self.applied_links: tuple[str, ...] | None = None
        self.applied_costs: dict[str, int] = {}
        self.speeds: dict[str, int] = {}  # Mb/s, last known per link
        self.applied_networkd: dict[str, str] | None = None
        self.stage = Stage.BOOTING
        self.joined = 0  # the number of other nodes last reported all routed
        self.in_conflict = False
        self.own_lsa_seq: deque[tuple[float, int]] = deque()
        self.phantom_rounds: deque[tuple[float, frozenset[str]]] = deque()
        self.conflict: tuple[tuple[str, ...], float] = ((), -CONFLICT_HOLD)  # last, when
        self.errors: dict[str, str] = {}
        self.ipr = IPRoute()
        self.vty = Vty(opts.vty_socket or Path("/run/frr"))

    # --- controllers

    def reconcile_identity(self) -> None:
        if self.opts.set_hostname and socket.gethostname() != self.node.hostname:
            socket.sethostname(self.node.hostname)
        _sysctl("net/ipv6/conf/all/forwarding", "1")
        _sysctl("net/ipv4/ip_forward", "1")
        lo = self.ipr.link_lookup(ifname="lo")[0]
        have = {a.get("IFA_ADDRESS") for a in self.ipr.get_addr(index=lo, family=socket.AF_INET6)}
        if str(self.node.loopback) not in have:
            self.ipr.addr("add", index=lo, address=str(self.node.loopback), prefixlen=128)

    def reconcile_env(self) -> None:
        """node.env and anycast.env, which the overlay, anycast and kubelet units read."""
        d = self.opts.env_dir
        if d is None:
            return
        _write_if_changed(d / NODE_ENV.name, node_env(self.node))
        services = _credential("kubermesh.anycast")
        anycast = d / ANYCAST_ENV.name
        if services:
            _write_if_changed(anycast, anycast_env(services.split()))
        else:
            anycast.unlink(missing_ok=True)

    def mesh_links(self) -> tuple[str, ...]:
        nics = hardware.nics(self.opts.sysfs)
        excluded = (*self.site.mesh.not_mesh, *self.opts.not_mesh, *_credential_not_mesh())
        return tuple(hardware.mesh_links(nics, excluded, physical_only=not self.opts.virtual_links))

    def reconcile_networkd(self, links: tuple[str, ...]) -> None:
        d = self.opts.networkd_dir
        if d is None:
            return
        other = [n.name for n in hardware.nics(self.opts.sysfs)
                 if n.physical and n.name not in links]
        files = networkd.render(links, other)
        if files == self.applied_networkd:
            return
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.glob(f"{networkd.PREFIX}*.network"):
            if stale.name not in files:
                stale.unlink()
        for name, text in files.items():
            (d / name).write_text(text)
        r = subprocess.run(["networkctl", "reload"], capture_output=True, text=True,
                           timeout=30, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"networkctl reload: {r.stderr.strip()}")
        self.applied_networkd = files

    def reconcile_links(self, links: tuple[str, ...]) -> None:
        for name in links:
            # Link-local only: no SLAAC address, no default route from RAs.
            _sysctl(f"net/ipv6/conf/{name}/accept_ra", "0")
            _sysctl(f"net/ipv6/conf/{name}/autoconf", "0")
            _sysctl(f"net/ipv6/conf/{name}/forwarding", "1")
            idx = self.ipr.link_lookup(ifname=name)
            if idx and not self.ipr.get_links(idx[0])[0]["flags"] & 1:  # IFF_UP
                self.ipr.link("set", index=idx[0], state="up")

    def reconcile_frr(self, links: tuple[str, ...]) -> None:
        for name in links:
            # A NIC without carrier reports no speed: keep its last known one, so
            # a pulled cable does not change the link's cost (and reload FRR) twice.
            speed = _speed(self.opts.sysfs, name)
            if speed is not None and speed > 0:
                self.speeds[name] = speed
        costs = {name: link_cost(self.speeds.get(name)) for name in links}
        if links == self.applied_links and costs == self.applied_costs:
            return
        conf = render_frr_conf(self.site, self.node, links, log=f"log {self.opts.log_file}",
                               costs=costs)
        path = self.opts.frr_dir / "frr.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".frr.conf.new")
        tmp.write_text(conf)
        tmp.chmod(0o640)  # it holds the OSPF key
        _chown_frr(tmp)
        tmp.replace(path)
        if self._frr_running():
            cmd = [str(FRR_RELOAD), "--reload", "--confdir", str(self.opts.frr_dir), str(path)]
            if self.opts.vty_socket:
                cmd += ["--vty_socket", str(self.opts.vty_socket)]
            if self.opts.frr_run_dir:
                cmd += ["--rundir", str(self.opts.frr_run_dir)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"frr-reload failed: {(r.stderr or r.stdout).strip()[-300:]}")
        # else frr.service starts later and reads the file itself
        old = set(self.applied_links or ())
        self.applied_links, self.applied_costs = links, costs
        log(f"mesh links: {', '.join(links) or 'none'}"
            f" (+{len(set(links) - old)} -{len(old - set(links))})", links=",".join(links))

    def _frr_running(self) -> bool:
        return self.vty.up("zebra")

    def observe(self, links: tuple[str, ...]) -> NodeStatus:
        adjacent = self.vty.json("ospf6d", "show ipv6 ospf6 neighbor json").get("neighbors", [])
        neighbours = {n.get("interfaceName"): n for n in adjacent}
        link_status = []
        for name in links:
            n = neighbours.get(name, {})
            link_status.append(LinkStatus(name, _carrier(self.opts.sysfs, name),
                                          n.get("neighborId", ""), n.get("state", "")))
        db = self.vty.json("ospf6d", "show ipv6 ospf6 database router json")
        lsas = [x for area in db.get("areaScopedLinkStateDb", []) for x in area.get("lsa", [])]
        me = str(self.node.router_id)
        # A dead node's Router-LSA stays in the database until it ages out (an
        # hour), still listing its links: only what the SPF tree reaches counts.
        reachable = self._spf_reachable() - {me}
        in_db = {x["advRouter"] for x in lsas} - {me}
        routers = in_db & reachable
        own_seq = max((x["seqNum"] for x in lsas if x["advRouter"] == me), default=None)
        # Reachable routers whose Router-LSA lists a link to this router-id that
        # this node does not have: someone else holds the router-id (payload
        # "rid/ifid").
        claim_me = {x["advRouter"] for x in lsas
                    if x["advRouter"] in routers and str(x.get("payload", "")).split("/")[0] == me}
        phantoms = claim_me - {n.get("neighborId") for n in adjacent}
        found = self._lsa_war(own_seq) + self._phantom_links(phantoms)
        now = time.monotonic()
        if found:
            self.conflict = (found, now)
        # Held for a while: twins reset each other's adjacencies, so the evidence
        # comes and goes; the report should not.
        conflicts = found or (self.conflict[0] if now - self.conflict[1] < CONFLICT_HOLD else ())
        ula = self.site.mesh.ula
        loops = plan.loopback_subnet(ula)
        routes6 = [r for r in self.ipr.get_routes(family=socket.AF_INET6)
                   if r["dst_len"] == 128 and r.get_attr("RTA_DST") and r["proto"] != 2]
        routed = {
            r.get_attr("RTA_DST") for r in routes6  # not kernel-local (proto 2)
            if ipaddress.IPv6Address(r.get_attr("RTA_DST")) in loops
            and r.get_attr("RTA_DST") != str(self.node.loopback)
        }
        local = self._lo_addresses()
        overlay = self._overlay_status(routes6, local)
        dests = {ipaddress.IPv6Address(r.get_attr("RTA_DST")) for r in routes6}
        anycast = tuple(
            AnycastStatus(name, str(addr), "local" if addr in local else
                          "routed" if addr in dests else "unreachable")
            for name, addr in sorted(self.site.anycast.items()))
        apiserver = next((a.state for a in anycast if a.service == "apiserver"), "")
        kubelet = self._kubelet_state()
        stage = status.stage_of(tuple(link_status), len(routers), len(routed), overlay,
                                apiserver, kubelet)
        return NodeStatus(
            node_id=self.node.node_id, hostname=self.node.hostname, identity=str(self.hw),
            loopback=str(self.node.loopback), router_id=me, stage=stage,
            links=tuple(link_status), known_nodes=len(routers), routes_to=len(routed),
            known=tuple(sorted(routers)), routed=tuple(sorted(routed)),
            conflicts=conflicts, errors=tuple(f"{k}: {v}" for k, v in self.errors.items()),
            overlay=overlay, anycast=anycast, kubelet=kubelet,
            unreachable=tuple(sorted(in_db - reachable)),
        )

    def _spf_reachable(self) -> set[str]:
        """The router-ids in ospf6d's shortest-path tree; none while it is down."""
        try:
            return spf_tree_routers(self.vty.command("ospf6d", "show ipv6 ospf6 spf tree"))
        except VtyError:
            return set()

    def _lo_addresses(self) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        lo = self.ipr.link_lookup(ifname="lo")[0]
        return {ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                for a in self.ipr.get_addr(index=lo)}

    def _overlay_status(self, routes6: list[Any],
                        local: set[ipaddress.IPv4Address | ipaddress.IPv6Address]
                        ) -> OverlayStatus:
        """What the overlay agent has done, read back from the kernel: this node's
        claim on lo, the other nodes' claims it routes to, and their IPv4 routes."""
        ula, site_pods = self.site.mesh.ula, self.site.pods
        mine = [c for a in local if isinstance(a, ipaddress.IPv6Address)
                and (c := pods.parse_claim(ula, site_pods, a)) is not None
                and c.owner == self.node.router_id]
        others = {c.block for r in routes6
                  if (c := pods.parse_claim(ula, site_pods,
                                            ipaddress.IPv6Address(r.get_attr("RTA_DST"))))
                  is not None and c.owner != self.node.router_id}
        routed = {ipaddress.IPv4Network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")
                  for r in self.ipr.get_routes(family=socket.AF_INET)
                  if r["proto"] == RTPROT_KUBERMESH and r.get_attr("RTA_DST")}
        if not mine:
            return OverlayStatus(blocks_known=len(others))
        block = mine[0].block
        return OverlayStatus(str(block), str(pods.node_address(block)), len(others),
                             len(others & routed))

    def _kubelet_state(self) -> str:
        if not self.opts.kubelet_binary.exists():
            return status.KUBELET_NOT_INSTALLED
        r = subprocess.run(["systemctl", "is-active", KUBELET_UNIT], capture_output=True,
                           text=True, timeout=10, check=False)
        return r.stdout.strip() or "unknown"

    def _lsa_war(self, own_seq: int | None) -> tuple[str, ...]:
        now = time.monotonic()
        if own_seq is not None:
            self.own_lsa_seq.append((now, own_seq))
        while self.own_lsa_seq and now - self.own_lsa_seq[0][0] > LSA_WAR_WINDOW:
            self.own_lsa_seq.popleft()
        if len(self.own_lsa_seq) >= 2:
            bumps = self.own_lsa_seq[-1][1] - self.own_lsa_seq[0][1]
            if bumps > LSA_WAR_BUMPS:
                return (f"another node uses router-id {self.node.router_id}: this node's "
                        f"Router-LSA was re-originated {bumps} times in "
                        f"{self.own_lsa_seq[-1][0] - self.own_lsa_seq[0][0]:.0f} s; its "
                        f"hardware identity ({self.hw}) is probably duplicated",)
        return ()

    def _phantom_links(self, phantoms: set[str]) -> tuple[str, ...]:
        """A link to this router-id in a neighbour's LSA outlives a real adjacency
        by at most a dead interval. One seen in most rounds of the last
        PHANTOM_WINDOW seconds is another node's (which may itself flap: two
        nodes with one router-id keep resetting each other's adjacencies)."""
        now = time.monotonic()
        window = max(PHANTOM_WINDOW, 10 * self.site.mesh.dead_interval)
        self.phantom_rounds.append((now, frozenset(phantoms)))
        while now - self.phantom_rounds[0][0] > window:
            self.phantom_rounds.popleft()
        rounds = len(self.phantom_rounds)
        if rounds < PHANTOM_ROUNDS or now - self.phantom_rounds[0][0] < window / 2:
            return ()
        seen = [r for r in sorted(set().union(*(p for _, p in self.phantom_rounds)))
                if sum(r in p for _, p in self.phantom_rounds) * 2 >= rounds]
        if not seen:
            return ()
        return (f"another node uses router-id {self.node.router_id}: {', '.join(seen)} "
                f"list{'s' if len(seen) == 1 else ''} a link to it that this node does "
                f"not have, in most of the last {window:.0f} s; its hardware identity "
                f"({self.hw}) is probably duplicated",)

    # --- the loop

    def step(self) -> NodeStatus:
        for name, controller in (("identity", self.reconcile_identity),
                                 ("env", self.reconcile_env)):
            self._guard(name, controller)
        links = self.mesh_links()
        self._guard("networkd", lambda: self.reconcile_networkd(links))
        self._guard("links", lambda: self.reconcile_links(links))
        self._guard("frr", lambda: self.reconcile_frr(links))
        st = self.observe(links)
        if st.stage != self.stage:
            log(f"kubermesh: stage {self.stage} -> {st.stage} ({st.routes_to}/{st.known_nodes}"
                " nodes routed)", "notice", stage=str(st.stage))
            self.stage = st.stage
        joined = st.routes_to if st.known_nodes and st.routes_to == st.known_nodes else 0
        if joined and joined != self.joined:
            # "Mesh joined" as it grows, for people and for power-on-to-joined timings.
            log(f"kubermesh: mesh joined: routes to all {joined} other nodes", "notice",
                routes_to=str(joined))
        self.joined = joined
        if bool(st.conflicts) != self.in_conflict:  # reported when it starts and ends
            for c in st.conflicts:
                log(f"kubermesh: CONFLICT: {c}", "error", conflict=c)
            if not st.conflicts:
                log("kubermesh: identity conflict over", "notice")
            self.in_conflict = bool(st.conflicts)
        status.write(st, self.opts.status_file)
        return st

    def _guard(self, name: str, fn: Any) -> None:
        try:
            fn()
        except Exception as e:  # reported and retried next round; others go on
            if self.errors.get(name) != str(e):
                log(f"kubermesh: {name}: {e}", "error", controller=name)
            self.errors[name] = str(e)
        else:
            self.errors.pop(name, None)

    def resume(self) -> None:
        """Take up from the status an earlier run of this agent left (it restarted,
        the node did not): the stage and the mesh it had reported are not announced
        again, and a conflict it reported stays reported for its hold time."""
        try:
            prev = status.read(self.opts.status_file)
        except (OSError, ValueError, KeyError, TypeError):
            return  # first run of this boot, or a file from an older agent
        if prev.node_id != self.node.node_id:
            return
        self.stage = prev.stage
        if prev.known_nodes and prev.routes_to == prev.known_nodes:
            self.joined = prev.routes_to
        if prev.conflicts:
            self.conflict = (prev.conflicts, time.monotonic())
            self.in_conflict = True
        log(f"kubermesh agent: resuming at stage {prev.stage}")

    def run(self) -> None:
        log(f"kubermesh agent: {self.node.hostname} {self.node.loopback} "
            f"router-id {self.node.router_id} (from {self.hw})", node_id=self.node.node_id)
        self.resume()
        self.ipr.bind()  # link and address events wake the loop
        ping = watchdog_interval()
        st = self.step()
        notify(READY="1", STATUS=str(st.stage))
        while True:
            ready, _, _ = select.select([self.ipr], [], [], min(PERIOD, ping or PERIOD))
            if ready:
                self.ipr.get()  # drain; the state is read afresh below
                time.sleep(0.1)  # a cable plug is a burst of events: take them together
            st = self.step()
            notify(WATCHDOG="1", STATUS=f"{st.stage}: {st.routes_to}/{st.known_nodes} routed")


SYSTEM_CREDENTIALS = Path("/run/credentials/@system")


def _credential_not_mesh() -> list[str]:
    """NICs the machine's owner marked as not mesh, e.g. a management NIC: the
    credential kubermesh.not_mesh (names or MAC globs). Absent, every physical
    NIC is mesh."""
    return _credential("kubermesh.not_mesh").split()


def _credential(name: str) -> str:
    """A credential, the unit's own or the system's (SMBIOS type 11 under QEMU,
    imported by systemd); "" when there is none."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    for d in ([Path(directory)] if directory else []) + [SYSTEM_CREDENTIALS]:
        try:
            return (d / name).read_text()
        except OSError:
            continue
    return ""


def node_env(node: NodeIdentity) -> str:
    """The node's identity as an EnvironmentFile= (pure)."""
    return "".join(f"{k}={v}\n" for k, v in (
        ("KUBERMESH_NODE_ID", node.node_id), ("KUBERMESH_HOSTNAME", node.hostname),
        ("KUBERMESH_LOOPBACK", node.loopback), ("KUBERMESH_ROUTER_ID", node.router_id)))


def anycast_env(services: list[str]) -> str:
    """`name=URL` entries as the anycast agent's arguments (pure). systemd splits
    the value on spaces, so none may hold one, nor a quote or a `$`."""
    for svc in services:
        name, sep, url = svc.partition("=")
        if not sep or not name or not url or any(c in svc for c in " '\"\\$"):
            raise ValueError(f"credential kubermesh.anycast: {svc!r} is not name=probe-URL")
    args = " ".join(f"--service {svc}" for svc in services)
    return f"KUBERMESH_ANYCAST_SERVICES={args}\n"


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    tmp.replace(path)


def _sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    if path.read_text().strip() != value:
        path.write_text(value)


def _carrier(sysfs: Path, name: str) -> bool:
    try:
        return (sysfs / "class" / "net" / name / "carrier").read_text().strip() == "1"
    except OSError:
        return False


def _speed(sysfs: Path, name: str) -> int | None:
    """The NIC's speed in Mb/s, None when it does not say (-1, no carrier, no file)."""
    try:
        return int((sysfs / "class" / "net" / name / "speed").read_text())
    except (OSError, ValueError):
        return None


def _chown_frr(path: Path) -> None:
    # Without an frr user (unit tests) the file stays root's.
    with contextlib.suppress(LookupError, PermissionError):
        shutil.chown(path, "frr", "frr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubermesh agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", type=Path, default=Path("/etc/kubermesh/site.toml"))
    p.add_argument("--frr-dir", type=Path, default=Path("/etc/frr"))
    p.add_argument("--status-file", type=Path, default=status.STATUS_FILE)
    p.add_argument("--identity", help="kind:value, e.g. mac:02:00:00:00:00:01 (lab)")
    p.add_argument("--virtual-links", action="store_true", help="veths are mesh links (lab)")
    p.add_argument("--not-mesh", action="append", default=[], help="NIC name or MAC glob")
    p.add_argument("--vty-socket", type=Path)
    p.add_argument("--frr-run-dir", type=Path)
    p.add_argument("--no-hostname", action="store_true", help="leave the hostname alone")
    p.add_argument("--log", default="syslog informational", help="FRR's log target")
    p.add_argument("--networkd-dir", type=Path,
                   help="write systemd-networkd files here (the image: /run/systemd/network)")
    p.add_argument("--env-dir", type=Path,
                   help="write node.env and anycast.env here (the image: /run/kubermesh)")
    p.add_argument("--once", action="store_true", help="one round, then exit")
    a = p.parse_args(argv)
    ident = None
    if a.identity:
        kind, _, value = a.identity.partition(":")
        ident = HardwareIdentity(kind, value)
    agent = Agent(Options(
        site_file=a.site, frr_dir=a.frr_dir, status_file=a.status_file, identity=ident,
        virtual_links=a.virtual_links, not_mesh=tuple(a.not_mesh), vty_socket=a.vty_socket,
        frr_run_dir=a.frr_run_dir, set_hostname=not a.no_hostname, log_file=a.log,
        networkd_dir=a.networkd_dir, env_dir=a.env_dir,
    ))
    if a.once:
        agent.step()
        return 0
    agent.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
