"""On a control-plane holder: a node the mesh has lost is marked unreachable at
once (mesh.eviction says what and why), through the holder's own apiserver
with the client the admission controller opened."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from firstboot.admission import REQUEST_TIMEOUT, Admission
from firstboot.node import NodeConfig
from firstboot.ospf import Ospf
from firstboot.runtime import Controller
from mesh import eviction, plan

log = logging.getLogger("kubermesh.eviction")


class Eviction(Controller):
    name = "kube-eviction"
    after = ("ospf", "kube-admission")
    period = 1.0

    def __init__(self, cfg: NodeConfig, ospf: Ospf, admission: Admission) -> None:
        self.cfg, self.ospf, self.admission = cfg, ospf, admission
        self.marked: dict[str, float] = {}  # lost nodes handled -> when (epoch seconds)
        self.last: list[str] = []  # the last few, for the status

    def next_run(self) -> float | None:
        return self.period if self.admission.client is not None else None

    def reconcile(self) -> bool:
        before = list(self.last)
        if self.admission.client is None:
            self.marked.clear()
            return False
        view = self.ospf.view
        lost = eviction.lost_nodes(view.unreachable,
                                   view.loopbacks(plan.loopback_subnet(self.cfg.site.mesh.ula)))
        self.marked = {n: t for n, t in self.marked.items() if n in lost}  # back: forget
        for name, router in sorted(lost.items()):
            if name not in self.marked:
                self._mark(name, router)
        return self.last != before

    def _mark(self, name: str, router: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = self.admission.client
        core = client.CoreV1Api(api)
        now = datetime.now(UTC)
        try:
            node: dict[str, Any] = api.sanitize_for_serialization(
                core.read_node(name, _request_timeout=REQUEST_TIMEOUT))
        except ApiException as e:
            if e.status != 404:
                raise
            self.marked[name] = now.timestamp()  # a mesh node that runs no kubelet
            return
        if not eviction.is_marked(node):
            core.patch_node(name, eviction.taint_patch(node, now),
                            _request_timeout=REQUEST_TIMEOUT)
            core.patch_node_status(name, eviction.ready_unknown(node, router, now),
                                   _request_timeout=REQUEST_TIMEOUT)
            log.warning("node %s (router %s) is gone from the mesh: marked unreachable, its "
                        "pods go elsewhere in %d s", name, router, eviction.TOLERATION_SECONDS)
            self.last = [*self.last[-9:], f"{name} at {now:%H:%M:%S}"]
        self.marked[name] = now.timestamp()

    def report(self) -> dict[str, Any]:
        return {"marked_unreachable": list(self.last)}
