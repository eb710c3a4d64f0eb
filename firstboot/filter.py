"""The packet filter: nftables rendered by mesh.nft from the mesh links and the
Full OSPFv3 adjacencies, applied with `nft -f` when it changes. A device on a
mesh port without the site's key never becomes Full: nothing it sends is
forwarded, and the node answers it nothing but what an adjacency needs."""

from __future__ import annotations

import logging
import shutil
import subprocess

from firstboot.node import Links
from firstboot.ospf import Ospf
from firstboot.provision import Provision
from firstboot.runtime import Controller
from mesh.nft import FilterSpec, render_nftables

log = logging.getLogger("kubermesh.filter")


class Filter(Controller):
    name = "filter"
    after = ("links", "ospf", "provision")
    period = 60.0  # and again, in case someone flushed it

    def __init__(self, links: Links, ospf: Ospf, provision: Provision, nft: str = "nft") -> None:
        self.links, self.ospf, self.provision = links, ospf, provision
        self.nft = shutil.which(nft) or nft
        self.applied: str | None = None
        self.spec = FilterSpec((), ())

    def desired(self) -> FilterSpec:
        mesh = tuple(sorted(self.links.names))
        serving = self.provision.serving
        return FilterSpec(mesh, tuple(sorted(self.ospf.view.full_links & set(mesh))),
                          tuple(sorted(s.name for s in serving if s.name in mesh)))

    def reconcile(self) -> bool:
        spec = self.desired()
        text = render_nftables(spec)
        present = subprocess.run([self.nft, "list", "table", "inet", "kubermesh"],
                                 capture_output=True, text=True, timeout=30,
                                 check=False).returncode == 0
        if text == self.applied and present:
            return False
        r = subprocess.run([self.nft, "-f", "-"], input=text, capture_output=True, text=True,
                           timeout=30, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"nft -f: {r.stderr.strip()[-300:]}")
        if spec.full_links != self.spec.full_links or self.applied is None:
            log.info("packet filter: forwarding from %s (of mesh links %s)",
                     ", ".join(spec.full_links) or "no link", ", ".join(spec.mesh_links) or "none")
        self.applied, self.spec = text, spec
        return True
