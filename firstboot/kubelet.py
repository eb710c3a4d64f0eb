"""The kubelet's side of the node: containerd's and the kubelet's configuration,
rendered by mesh.kubelet from the site and this node's pod block once it holds
one; the kubelet unit, started once those files are written and the apiserver's
anycast address is reachable (not before: a mesh without a control plane yet runs
no kubelet failing and restarting); and the unit's state for the status.
containerd orders itself after `kubermesh wait --stage overlay` (files in place).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

from firstboot.files import write_atomic
from firstboot.node import NodeConfig
from firstboot.overlay import Overlay
from firstboot.runtime import Controller
from firstboot.status import KUBELET_NOT_INSTALLED as NOT_INSTALLED
from mesh import kubelet

log = logging.getLogger("kubermesh.kubelet")

KUBELET_UNIT = "kubermesh-kubelet.service"
PROXY_UNIT = "kubermesh-kube-proxy.service"


def kubelet_paths(cfg: NodeConfig) -> kubelet.KubeletPaths:
    p = cfg.paths
    return kubelet.KubeletPaths(run_dir=p.run_dir, kubelet_dir=p.kubelet_dir,
                                ca_file=p.ca_file, cni_conf_dir=p.cni_conf_dir)


class Kubelet(Controller):
    name = "kubelet"
    after = ("overlay", "anycast", "routes")
    period = 10.0

    def __init__(self, cfg: NodeConfig, overlay: Overlay,
                 apiserver: Callable[[], bool] = lambda: False) -> None:
        """`apiserver()`: whether the apiserver's anycast address is reachable."""
        self.cfg, self.overlay, self.apiserver = cfg, overlay, apiserver
        self.written: dict[Path, tuple[str, int]] = {}
        self.state = NOT_INSTALLED
        self.version: tuple[int, int] | None = None

    def kubelet_version(self) -> tuple[int, int]:
        """The installed kubelet's (major, minor), asked once; without a kubelet (or
        an answer), the newest shape the renderers know."""
        if self.version is None:
            binary = self.cfg.paths.kubelet_binary
            self.version = kubelet.NEWEST
            if binary.exists():
                r = subprocess.run([str(binary), "--version"], capture_output=True,
                                   text=True, timeout=60, check=False)
                try:
                    self.version = kubelet.kubelet_version(r.stdout)
                except ValueError as e:
                    log.warning("%s --version: %s; configuring it as %d.%d", binary, e,
                                *kubelet.NEWEST)
        return self.version

    def reconcile(self) -> bool:
        block = self.overlay.block
        if block is not None:
            files = kubelet.render_all(self.cfg.site, self.cfg.node.hostname, block,
                                       kubelet_paths(self.cfg), self.kubelet_version())
            if files != self.written:
                for path, (text, mode) in files.items():  # the bootstrap token: 0600
                    write_atomic(path, text, mode, only_if_changed=True)
                log.info("kubelet configuration for pod block %s written", block)
                self.written = files
        old = self.state
        self.state = self._unit_state()
        if self.written and self.state in ("inactive", "failed") and self.apiserver():
            log.info("the apiserver is reachable at its anycast address: starting the kubelet "
                     "and kube-proxy")
            r = subprocess.run(["systemctl", "start", "--no-block", KUBELET_UNIT, PROXY_UNIT],
                               capture_output=True, text=True, timeout=30, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"systemctl start {KUBELET_UNIT} {PROXY_UNIT}: "
                                   f"{r.stderr.strip()}")
            self.state = self._unit_state()
        return old != self.state

    def _unit_state(self) -> str:
        if not self.cfg.paths.kubelet_binary.exists():
            return NOT_INSTALLED
        r = subprocess.run(["systemctl", "is-active", KUBELET_UNIT], capture_output=True,
                           text=True, timeout=10, check=False)
        return r.stdout.strip() or "unknown"
