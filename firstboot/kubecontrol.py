"""The Kubernetes control plane on a control-plane slot holder.

While this node holds a slot and its etcd member answers, it runs
kube-apiserver, kube-controller-manager and kube-scheduler (mesh.kubecontrol:
their command lines), from certificates it issues itself with the site's
cluster CA (mesh.pki), kept in NodePaths.kube_pki (root only). A node that
holds no slot runs none of them and keeps no certificates. The apiserver's
anycast address follows its readiness (firstboot.anycast, the probe that
`readiness_url` names), so nodes reach the nearest ready apiserver.

On a node each process is `kubermesh-control-plane@NAME.service`; in the lab, a
child of the runtime.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping

from firstboot.anycast import Probe
from firstboot.controlplane import Slots
from firstboot.etcd import Etcd
from firstboot.files import write_atomic
from firstboot.node import NodeConfig
from firstboot.overlay import Overlay
from firstboot.runtime import Controller
from firstboot.services import ChildRunner, Runner, UnitRunner
from mesh import kubecontrol, pki, plan, pods
from mesh.kubecontrol import COMPONENTS

log = logging.getLogger("kubermesh.kubecontrol")

UNIT = "kubermesh-control-plane@{}.service"
PROBE_TIMEOUT = 2.0


def unit_runners(cfg: NodeConfig) -> dict[str, Runner]:
    return {c: UnitRunner(UNIT.format(c), cfg.paths.control_plane_env(c)) for c in COMPONENTS}


def child_runners(cfg: NodeConfig) -> dict[str, Runner]:
    return {c: ChildRunner(cfg.paths.kube_bin_dir / c, cfg.paths.state_dir / f"{c}.log")
            for c in COMPONENTS}


def cannot_run(cfg: NodeConfig) -> str | None:
    """Why this node cannot run the control plane (binaries, size), or None."""
    missing = [c for c in COMPONENTS if not (cfg.paths.kube_bin_dir / c).exists()]
    if missing:
        return f"not installed ({cfg.paths.kube_bin_dir / missing[0]})"
    return kubecontrol.too_small(*KubeControlPlane.capacity())


class KubeControlPlane(Controller):
    name = "kube-control-plane"
    after = ("control-plane", "etcd", "overlay")
    period = 5.0

    def __init__(self, cfg: NodeConfig, slots: Slots, etcd: Etcd, overlay: Overlay,
                 runners: Mapping[str, Runner] | None) -> None:
        """runners None: this node runs no control plane (a lab without Kubernetes)."""
        self.cfg, self.slots, self.etcd, self.overlay = cfg, slots, etcd, overlay
        self.runners = runners
        self.state = "no slot"
        self.started: dict[str, dict[str, str]] = {}  # what each was last started with
        self.probe = Probe.parse(kubecontrol.readiness_url(cfg.node.loopback))

    @staticmethod
    def capacity() -> tuple[int, int]:
        """This node's CPUs and memory (MiB)."""
        with open("/proc/meminfo") as f:
            kib = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:"))
        return len(os.sched_getaffinity(0)), kib // 1024

    def runs(self) -> bool:
        """Whether its apiserver runs here (starting or ready)."""
        return self.state == "running" or self.state.startswith("starting")

    def next_run(self) -> float | None:
        return 1.0 if self.slots.slot is not None and self.state != "running" else self.period

    def reconcile(self) -> bool:
        before = self.state
        self.state = self._reconcile()
        if self.state != before:
            log.info("Kubernetes control plane: %s", self.state)
        return self.state != before

    def _reconcile(self) -> str:
        if self.runners is None:
            return "off"
        pki_dir = self.cfg.paths.kube_pki
        if self.slots.slot is None:
            self._stop("this node holds no control-plane slot")
            if pki_dir.exists():
                shutil.rmtree(pki_dir)
            return "no slot"
        why = cannot_run(self.cfg)
        if why:
            return why
        if self.etcd.state != "running" and not self.started:
            return f"waiting for etcd ({self.etcd.state})"
        if self.overlay.block is None:
            return "waiting for a pod block (the apiserver advertises its address)"
        self._issue()
        for c in kubecontrol.components(self.cfg.site, self.cfg.node.loopback,
                                        pods.node_address(self.overlay.block),
                                        self.etcd.me.client_url, pki_dir):
            self._run(c)
        problem = self.probe.check(PROBE_TIMEOUT)
        return "running" if problem is None else f"starting ({problem})"

    def _issue(self) -> None:
        """This holder's certificates and kubeconfigs, issued once (again when the
        site's CA is not the one they were issued by)."""
        d = self.cfg.paths.kube_pki
        ca = pki.ca_certificate(self.cfg.site)
        try:
            if (d / "ca.crt").read_text() == ca and (d / "admin.conf").exists():
                return
        except OSError:
            pass
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.chmod(0o700)
        hostname = plan.hostname_of(self.cfg.node.loopback)
        files = pki.holder_files(self.cfg.site, hostname, self.cfg.node.loopback,
                                 kubecontrol.local_server(self.cfg.node.loopback))
        for name, (content, mode) in sorted(files.items(), key=lambda x: x[0] == "ca.crt"):
            write_atomic(d / name, content, mode)  # ca.crt last: it marks them complete
        log.info("issued the control plane's certificates for %s in %s", hostname, d)

    def _run(self, c: kubecontrol.Component) -> None:
        assert self.runners is not None
        runner = self.runners[c.name]
        env = {"ARGS": " ".join(c.args)}
        kubecontrol.check_args(c)
        if runner.running():
            if self.started.setdefault(c.name, env) == env:
                return  # a restarted runtime adopts what runs
            log.info("restarting %s: its command line changed", c.name)
            runner.stop()
        else:
            log.info("starting %s", c.name)
        runner.start(env)
        self.started[c.name] = env

    def _stop(self, why: str) -> None:
        assert self.runners is not None
        for name, runner in self.runners.items():
            if runner.running():
                log.info("stopping %s: %s", name, why)
                runner.stop()
        self.started.clear()

    def close(self) -> None:
        for runner in (self.runners or {}).values():
            runner.close()

    def report(self) -> dict[str, str]:
        return {"state": self.state}
