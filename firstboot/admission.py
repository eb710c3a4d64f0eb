"""Kubelets join unaided (mesh.admission says what and why): on a slot holder
whose control plane runs, the site's bootstrap token and kubeadm's bootstrap
RBAC are kept in the cluster, and kubelet-serving certificate requests are
approved when the mesh vouches for them, denied when it still does not after
DENY_AFTER seconds (a node whose pod block is not known yet is given time).

Every holder does this, through its own apiserver with the kubeconfig it issued
itself (admin.conf); what one does, another finds done. The official
`kubernetes` client is imported only here, on holders.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Any

from firstboot.kubecontrol import KubeControlPlane
from firstboot.node import NodeConfig
from firstboot.ospf import Ospf
from firstboot.overlay import Overlay
from firstboot.runtime import Controller
from mesh import admission, plan, pods
from mesh.admission import MeshNode, ServingRequest

log = logging.getLogger("kubermesh.admission")

DENY_AFTER = 20.0  # seconds a request the mesh does not vouch for stays pending
REQUEST_TIMEOUT = 5


class Admission(Controller):
    name = "kube-admission"
    after = ("kube-control-plane", "overlay", "ospf")
    period = 2.0

    def __init__(self, cfg: NodeConfig, kube: KubeControlPlane, ospf: Ospf,
                 overlay: Overlay) -> None:
        self.cfg, self.kube, self.ospf, self.overlay = cfg, kube, ospf, overlay
        self.client: Any = None  # kubernetes.client.ApiClient, while the control plane runs
        self.bootstrapped = False
        self.state = "no control plane on this node"
        self.approved: list[str] = []  # the last few, for the status
        self.denied: list[str] = []

    def next_run(self) -> float | None:
        return self.period if self.kube.state == "running" else None

    def reconcile(self) -> bool:
        before = (self.state, len(self.approved), len(self.denied))
        if self.kube.state != "running":
            self.client, self.bootstrapped = None, False
            self.state = "no control plane on this node"
            return before != (self.state, len(self.approved), len(self.denied))
        if self.client is None:
            self.client = self._connect()
        if not self.bootstrapped:
            self._bootstrap()
            self.bootstrapped = True
            log.info("the site's bootstrap token and kubeadm's bootstrap RBAC are in the "
                     "cluster")
        self._review()
        self.state = "bootstrap token and RBAC in place; approving kubelet-serving requests"
        return before != (self.state, len(self.approved), len(self.denied))

    def _connect(self) -> Any:
        from kubernetes import client, config

        conf = client.Configuration()
        config.load_kube_config(config_file=str(self.cfg.paths.kube_pki / "admin.conf"),
                                client_configuration=conf)
        return client.ApiClient(conf)

    def _bootstrap(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core, rbac = client.CoreV1Api(self.client), client.RbacAuthorizationV1Api(self.client)
        secret = admission.bootstrap_token_secret(self.cfg.site)
        name = secret["metadata"]["name"]
        try:
            core.create_namespaced_secret("kube-system", secret,
                                          _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status != 409:
                raise
            core.replace_namespaced_secret(name, "kube-system", secret,
                                           _request_timeout=REQUEST_TIMEOUT)
        for binding in admission.role_bindings():
            try:
                rbac.create_cluster_role_binding(binding, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as e:
                if e.status != 409:
                    raise

    def mesh_nodes(self) -> dict[str, MeshNode]:
        """Every node the OSPFv3 view shows, by hostname, with the addresses it owns."""
        blocks = {c.owner: c.block for c in self.overlay.claims.values()}
        loops = self.ospf.view.loopbacks(plan.loopback_subnet(self.cfg.site.mesh.ula))
        loops[self.cfg.node.router_id] = self.cfg.node.loopback
        if self.overlay.block is not None:
            blocks[self.cfg.node.router_id] = self.overlay.block
        out = {}
        for router, loopback in loops.items():
            block = blocks.get(router)
            name = plan.hostname_of(loopback)
            out[name] = MeshNode(name, loopback, pods.node_address(block) if block else None)
        return out

    def _review(self) -> None:
        from kubernetes import client

        certs = client.CertificatesV1Api(self.client)
        pending = [c for c in certs.list_certificate_signing_request(
            _request_timeout=REQUEST_TIMEOUT).items
            if c.spec.signer_name == admission.SERVING_SIGNER
            and not (c.status and c.status.conditions)]
        if not pending:
            return
        nodes = self.mesh_nodes()
        now = datetime.now(UTC)
        for csr in pending:
            req = ServingRequest(csr.metadata.name, csr.spec.username or "",
                                 frozenset(csr.spec.groups or ()),
                                 frozenset(csr.spec.usages or ()),
                                 base64.b64decode(csr.spec.request))
            problem = admission.serving_problem(req, nodes)
            if problem is None:
                self._decide(certs, csr, "Approved", "the mesh vouches for the node and "
                             "every address it names")
                self.approved = [*self.approved[-9:], req.name]
                log.info("approved %s for %s", req.name, req.username)
            elif (now - csr.metadata.creation_timestamp).total_seconds() > DENY_AFTER:
                self._decide(certs, csr, "Denied", problem)
                self.denied = [*self.denied[-9:], f"{req.name}: {problem}"]
                log.warning("denied %s for %s: %s", req.name, req.username, problem)

    @staticmethod
    def _decide(certs: Any, csr: Any, decision: str, message: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        now = datetime.now(UTC)
        csr.status = csr.status or client.V1CertificateSigningRequestStatus()
        csr.status.conditions = [client.V1CertificateSigningRequestCondition(
            type=decision, status="True", reason=f"Kubermesh{decision}", message=message,
            last_update_time=now, last_transition_time=now)]
        try:
            certs.replace_certificate_signing_request_approval(
                csr.metadata.name, csr, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status != 409:  # another holder decided first
                raise

    def report(self) -> dict[str, Any]:
        return {"state": self.state, "approved": list(self.approved),
                "denied": list(self.denied)}
