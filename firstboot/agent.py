"""`kubermesh agent`: the node runtime with every node-side controller, on every boot.

    identity → links → frr            hostname, loopback, mesh links, FRR config
    ospf → conflicts                  ospf6d's view; duplicated identities
    routes → overlay → kubelet        IPv6 routes → pod-block claims → pod block,
                                      IPv4 routes, CNI → kubelet configuration
    anycast                           service health → anycast addresses on lo
    filter                            mesh links + Full adjacencies → nftables
    status                            the stage, computed from all of the above

Safe to rerun and to restart: everything is derived again from the hardware, the
site and the kernel; a restarted runtime takes up the stage, mesh and conflict it
had reported from its status file, so nothing is announced twice. Bad input (site,
credentials, hardware) is refused once, in the status and the journal, with exit
status 78, which the unit does not restart.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firstboot import etcd as etcd_member
from firstboot import hardware, kubecontrol, status
from firstboot.admission import Admission
from firstboot.anycast import Anycast, Service, parse_services
from firstboot.clusterdns import ClusterDns
from firstboot.controlplane import Slots
from firstboot.etcd import Etcd
from firstboot.eviction import Eviction
from firstboot.filter import Filter
from firstboot.kubecontrol import KubeControlPlane
from firstboot.kubelet import Kubelet
from firstboot.light import Light
from firstboot.node import ConfigError, Frr, Identity, Links, NodeConfig, credential
from firstboot.ospf import Conflicts, Ospf
from firstboot.overlay import Overlay, Routes
from firstboot.paths import NodePaths
from firstboot.provision import Provision
from firstboot.runtime import Controller, Runtime
from firstboot.status import AnycastStatus, LinkStatus, NodeStatus, OverlayStatus, Stage
from firstboot.systemd import NOTICE, notify, setup_logging
from firstboot.vty import Vty
from mesh import kubecontrol as kubecontrol_spec
from mesh import plan, pods
from mesh.frr import FRR_DAEMONS
from mesh.plan import HardwareIdentity
from mesh.site import SiteError, load_site

log = logging.getLogger("kubermesh.agent")

EX_CONFIG = 78  # sysexits.h; the unit's RestartPreventExitStatus
STATUS_PERIOD = 2.0


def configure(site_file: Path, paths: NodePaths, identity: HardwareIdentity | None = None,
              not_mesh: tuple[str, ...] = (), virtual_links: bool = False,
              set_hostname: bool = True, frr_log: str = "syslog informational",
              anycast: tuple[str, ...] = ()) -> tuple[NodeConfig, list[Service]]:
    """Everything the runtime needs, checked once; ConfigError names what is wrong."""
    try:
        site = load_site(site_file)
    except SiteError as e:
        raise ConfigError(f"the site file is not valid: {'; '.join(e.problems)} "
                          f"({e.source})") from None
    try:
        hw = identity or hardware.identity(paths.sysfs)
    except ValueError as e:
        raise ConfigError(f"no hardware identity: {e}") from None
    node = plan.derive(hw, site.mesh.ula)
    excluded = (*site.mesh.not_mesh, *not_mesh, *credential(paths, "kubermesh.not_mesh").split())
    specs = [*anycast, *credential(paths, "kubermesh.anycast").split()]
    if (paths.kube_bin_dir / kubecontrol_spec.APISERVER).exists() and not any(
            s.startswith("apiserver=") for s in specs):
        # A slot holder's apiserver (firstboot.kubecontrol) behind the anycast address
        # while it is ready; on any other node the probe fails and nothing is announced.
        specs.append(f"apiserver={kubecontrol_spec.readiness_url(node.loopback)}")
    try:
        services = parse_services(site, specs)
    except ValueError as e:
        raise ConfigError(f"anycast services (credential kubermesh.anycast): {e}") from None
    cfg = NodeConfig(site, hw, node, paths, tuple(excluded), virtual_links, set_hostname,
                     frr_log)
    return cfg, services


class Status(Controller):
    """The node's stage and status, from the other controllers' outputs."""

    name = "status"
    period = STATUS_PERIOD
    after = ("links", "ospf", "conflicts", "provision", "filter", "routes", "overlay",
             "control-plane", "etcd", "kube-control-plane", "kube-admission", "kube-eviction",
             "anycast", "kubelet", "cluster-dns")

    def __init__(self, cfg: NodeConfig, rt: Runtime, *, links: Links, ospf: Ospf,
                 conflicts: Conflicts, routes: Routes, overlay: Overlay, anycast: Anycast,
                 kubelet: Kubelet, provision: Provision, slots: Slots, etcd: Etcd,
                 kube: KubeControlPlane, admission: Admission, eviction: Eviction,
                 dns: ClusterDns, light: Callable[[], str] = lambda: "") -> None:
        self.cfg, self.rt, self.provision, self.slots, self.etcd = cfg, rt, provision, slots, etcd
        self.kube, self.admission, self.eviction = kube, admission, eviction
        self.dns, self.light = dns, light
        self.links, self.ospf, self.conflicts, self.routes = links, ospf, conflicts, routes
        self.overlay, self.anycast, self.kubelet = overlay, anycast, kubelet
        self.stage = Stage.BOOTING
        self.joined = 0  # the number of other nodes last reported all routed
        self.last: NodeStatus | None = None

    def resume(self) -> None:
        """Take up from the status an earlier run left (it restarted, the node did not)."""
        try:
            prev = status.read(self.cfg.paths.status)
        except (OSError, ValueError, KeyError, TypeError):
            return  # first run of this boot, or a file from an older runtime
        if prev.node_id != self.cfg.node.node_id:
            return
        self.stage = prev.stage
        if prev.known_nodes and prev.routes_to == prev.known_nodes:
            self.joined = prev.routes_to
        self.conflicts.resume(prev.conflicts)
        log.info("resuming at stage %s", prev.stage)

    def compute(self) -> NodeStatus:
        cfg, view = self.cfg, self.ospf.view
        node = cfg.node
        links = tuple(LinkStatus(link.name, link.carrier,
                                 view.neighbours[link.name].router_id
                                 if link.name in view.neighbours else "",
                                 view.neighbours[link.name].state
                                 if link.name in view.neighbours else "")
                      for link in self.links.links)
        routers = view.in_db & view.reachable
        loops = plan.loopback_subnet(cfg.site.mesh.ula)
        routed = {str(a) for a in self.routes.table if a in loops and a != node.loopback}
        ov = self.overlay
        blocks = {c.block for c in ov.claims.values()} - {ov.block}
        overlay = (OverlayStatus(str(ov.block), str(pods.node_address(ov.block)), len(blocks),
                                 len(blocks & ov.routed))
                   if ov.block is not None else OverlayStatus(blocks_known=len(blocks)))
        anycast = tuple(
            AnycastStatus(name, str(addr), "local" if addr in self.anycast.announced else
                          "routed" if addr in self.routes.table else "unreachable")
            for name, addr in sorted(cfg.site.anycast.items()))
        apiserver = next((a.state for a in anycast if a.service == "apiserver"), "")
        stage = status.stage_of(links, len(routers), len(routed), overlay, apiserver,
                                self.kubelet.state)
        reports = tuple(status.ControllerReport(n, s.state, s.error, s.since)
                        for n, s in self.rt.registry.status.items() if n != self.name)
        return NodeStatus(
            node_id=node.node_id, hostname=node.hostname, identity=str(cfg.hw),
            loopback=str(node.loopback), router_id=str(node.router_id), stage=stage,
            links=links, known_nodes=len(routers), routes_to=len(routed),
            known=tuple(sorted(routers)), routed=tuple(sorted(routed)),
            conflicts=self.conflicts.conflicts,
            errors=tuple(f"{n}: {e}" for n, e in self.rt.registry.errors().items()),
            unreachable=tuple(sorted(view.unreachable)), overlay=overlay, anycast=anycast,
            kubelet=self.kubelet.state, updated=time.time(), controllers=reports,
            dns=self.dns.report(), light=self.light(),
            forged_claims=tuple(sorted(str(a) for a in ov.forged)),
            provision=self.provision.report(),
            control_plane={**self.slots.report(), "etcd": self.etcd.report(),
                           "kubernetes": {**self.kube.report(),
                                          "admission": self.admission.report(),
                                          **self.eviction.report()}},
        )

    def reconcile(self) -> bool:
        """Writes the status; True when the stage changed (the light shows it)."""
        st = self.compute()
        changed = st.stage != self.stage
        if changed:
            log.log(NOTICE, "stage %s -> %s (%d/%d nodes routed)", self.stage, st.stage,
                    st.routes_to, st.known_nodes, extra={"fields": {"stage": str(st.stage)}})
            self.stage = st.stage
        joined = st.routes_to if st.known_nodes and st.routes_to == st.known_nodes else 0
        if joined and joined != self.joined:
            # "Mesh joined" as it grows, for people and for power-on-to-joined timings.
            log.log(NOTICE, "mesh joined: routes to all %d other nodes", joined,
                    extra={"fields": {"routes_to": str(joined)}})
        self.joined = joined
        status.write(st, self.cfg.paths.status)
        self.last = st
        return changed

    def line(self) -> str:
        st = self.last
        if st is None:
            return "starting"
        return f"{st.stage}: {st.routes_to}/{st.known_nodes} routed" + (
            f"; {len(st.errors)} errors" if st.errors else "")


def build(cfg: NodeConfig, services: list[Service], etcd: str = "unit", light: bool = True
          ) -> tuple[Runtime, Status]:
    """The runtime with every controller, in the order they run."""
    from pyroute2 import IPRoute

    def events(groups: int) -> Any:
        ipr = IPRoute()
        ipr.bind(groups=groups)
        return ipr

    ipr = IPRoute()  # requests; the runtime's own socket carries the events
    vty = Vty(cfg.paths.frr_run)
    rt = Runtime(events)
    links = Links(cfg)
    ospf = Ospf(cfg, vty, links)
    routes = Routes(cfg, ipr)
    overlay = Overlay(cfg, ipr, routes, ospf, rt.post)
    conflicts = Conflicts(cfg, ospf)
    apiserver = cfg.site.anycast.get("apiserver")
    kubelet = Kubelet(cfg, overlay, lambda: apiserver is not None and (
        apiserver in anycast.announced or apiserver in routes.table))
    frr = Frr(cfg, links, lambda: sum(vty.up(d) for d in FRR_DAEMONS))
    provision = Provision(cfg, links, ospf, ipr)
    # Nodes that can run the Kubernetes control plane take free slots first.
    slots = Slots(cfg, ipr, routes, ospf, candidate=etcd != "off"
                  and kubecontrol.cannot_run(cfg) is None,
                  conflicted=lambda: bool(conflicts.conflicts))
    members = Etcd(cfg, slots, ospf, etcd_member.child_runner(cfg) if etcd == "children"
                   else etcd_member.unit_runner(cfg) if etcd == "unit" else None)
    # The control plane runs as etcd does: units on a node, children in the lab.
    kube = KubeControlPlane(cfg, slots, members, overlay,
                            kubecontrol.child_runners(cfg) if etcd == "children"
                            else kubecontrol.unit_runners(cfg) if etcd == "unit" else None)
    # The apiserver's readiness is probed only while this node runs one.
    anycast = Anycast([dataclasses.replace(s, runs=kube.runs) if s.probe == kube.probe
                       else s for s in services], ipr, rt.post)
    admit = Admission(cfg, kube, ospf, overlay)
    evict = Eviction(cfg, ospf, admit)
    dns = ClusterDns(cfg, ipr)
    rt.add(Identity(cfg, ipr), links, frr, ospf, conflicts, provision,
           Filter(links, ospf, provision), routes, overlay, slots, members, kube, admit,
           evict, anycast, kubelet, dns)
    st = Status(cfg, rt, links=links, ospf=ospf, conflicts=conflicts, routes=routes,
                overlay=overlay, anycast=anycast, kubelet=kubelet, provision=provision,
                slots=slots, etcd=members, kube=kube, admission=admit, eviction=evict,
                dns=dns, light=lambda: lamp.report() if lamp else "")
    rt.add(st)
    # The status light shows what the status says, after it.
    lamp = Light(lambda: (str(st.stage), len(st.last.conflicts) + len(st.last.forged_claims)
                          if st.last else 0)) if light else None
    if lamp is not None:
        rt.add(lamp)
    return rt, st


def _refuse(paths: NodePaths, message: str) -> int:
    """Bad input: said once (journal at err, status file, sd_notify), exit 78."""
    log.error("cannot start: %s", message, extra={"fields": {"error": message}})
    notify(STATUS=f"cannot start: {message}")
    st = NodeStatus(node_id="", hostname=os.uname().nodename, identity="", loopback="",
                    router_id="", stage=Stage.BOOTING, errors=(f"config: {message}",),
                    updated=time.time())
    try:
        status.write(st, paths.status)
    except OSError as e:
        log.error("writing %s: %s", paths.status, e)
    return EX_CONFIG


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubermesh agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", type=Path, default=NodePaths.site)
    p.add_argument("--state-dir", type=Path,
                   help="lab: everything the node writes goes under this directory")
    p.add_argument("--frr-run-dir", type=Path, default=NodePaths.frr_run,
                   help="FRR's vty sockets and pid files")
    p.add_argument("--identity", help="kind:value, e.g. mac:02:00:00:00:00:01 (lab)")
    p.add_argument("--virtual-links", action="store_true", help="veths are mesh links (lab)")
    p.add_argument("--not-mesh", action="append", default=[], help="NIC name or MAC glob")
    p.add_argument("--no-hostname", action="store_true", help="leave the hostname alone")
    p.add_argument("--frr-log", default="syslog informational", help="FRR's log target")
    p.add_argument("--anycast", action="append", default=[], metavar="NAME=PROBE-URL",
                   help="a service this node runs behind its anycast address, e.g. "
                        "etcd=http://[::1]:2379/health (also the credential kubermesh.anycast)")
    p.add_argument("--etcd", choices=("unit", "children", "off"), default="unit",
                   help="how a control-plane slot holder runs its etcd member: "
                        "kubermesh-etcd.service (a node), a child process (lab), or "
                        "not at all (a lab that runs its own etcd); its Kubernetes control "
                        "plane runs the same way")
    p.add_argument("--kube-bin-dir", type=Path,
                   help="lab: where kube-apiserver, kube-controller-manager and "
                        "kube-scheduler are (a node: /usr/bin)")
    p.add_argument("--join", action="store_true",
                   help="without a site, ask a serving neighbour to join (what a netbooted "
                        "node does on its own)")
    p.add_argument("--light", choices=("auto", "off"), default="auto",
                   help="a blink(1) status light, where one is plugged in (auto), or none "
                        "looked for (off: the lab, whose nodes share the host's USB)")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    setup_logging(a.debug, timestamps=a.state_dir is not None)
    os.umask(0o022)
    paths = (NodePaths.under(a.state_dir, a.frr_run_dir, a.site) if a.state_dir
             else NodePaths(site=a.site, frr_run=a.frr_run_dir))
    if a.kube_bin_dir is not None:
        paths = dataclasses.replace(paths, kube_bin_dir=a.kube_bin_dir)
    ident = None
    if a.identity:
        kind, _, value = a.identity.partition(":")
        ident = HardwareIdentity(kind, value)
    if not a.site.exists() and (a.join or _netbooted(paths)):
        return join_then_run(a, paths, ident, argv)
    try:
        cfg, services = configure(a.site, paths, ident, tuple(a.not_mesh), a.virtual_links,
                                  not a.no_hostname, a.frr_log, tuple(a.anycast))
    except ConfigError as e:
        return _refuse(paths, str(e))
    node = cfg.node
    log.info("kubermesh agent: %s %s router-id %s (from %s)", node.hostname, node.loopback,
             node.router_id, cfg.hw, extra={"fields": {"node_id": node.node_id}})
    rt, st = build(cfg, services, etcd=a.etcd, light=a.light == "auto")
    st.resume()
    if a.once:
        rt.run_pass()
        return 0
    rt.stop_on_signals()
    # frr.service, ordered after this unit, starts once frr.conf is written.
    reason = rt.run(st.line, ready_after="frr")
    log.info("stopped on %s", reason)
    return 0


def _netbooted(paths: NodePaths) -> bool:
    try:
        return "kubermesh.netroot=1" in paths.cmdline.read_text().split()
    except OSError:
        return False


def join_then_run(a: argparse.Namespace, paths: NodePaths, ident: HardwareIdentity | None,
                  argv: list[str] | None) -> int:
    """No site (a netbooted node): ask to join; once the site is here, start again
    with it, in this same process (the unit's PID, its READY already sent)."""
    from pyroute2 import IPRoute

    from firstboot.join import Join, JoinStatus, RouterListener, join_config

    try:
        not_mesh = (*a.not_mesh, *credential(paths, "kubermesh.not_mesh").split())
        cfg = join_config(paths, ident, tuple(not_mesh), a.virtual_links)
    except ValueError as e:
        return _refuse(paths, f"no hardware identity: {e}")
    log.log(NOTICE, "no site at %s: asking the neighbour that booted this node to join "
            "(node id %s, from %s)", a.site, cfg.node_id, cfg.hw,
            extra={"fields": {"node_id": cfg.node_id}})

    def events(groups: int) -> Any:
        ipr = IPRoute()
        ipr.bind(groups=groups)
        return ipr

    rt = Runtime(events)
    listener = RouterListener(rt.post)
    links = Links(cfg)
    joiner = Join(cfg, links, lambda: rt.stop("joined", handover=True),
                  lambda: dict(listener.routers), listener.solicit,
                  forget=listener.forget)
    st = JoinStatus(cfg, links, joiner, rt.registry.errors)
    rt.add(links, joiner, st)
    rt.stop_on_signals()
    try:
        reason = rt.run(st.line, ready_after="links")
    finally:
        listener.close()
    if reason != "joined":
        log.info("stopped on %s", reason)
        return 0
    args = sys.argv[1:] if argv is None else ["agent", *argv]
    log.info("starting again with the site")
    os.execv(sys.executable, [sys.executable, "-m", "kubermesh", *args])
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
