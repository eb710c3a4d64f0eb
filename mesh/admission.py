"""Kubelets join unaided: what the cluster needs for the site's bootstrap token,
and which kubelet-serving certificate requests the mesh vouches for.

A kubelet starts with the site's bootstrap token (mesh.kubelet), asks for a
client certificate, and later for a serving certificate (serverTLSBootstrap).
- The token is a Secret in kube-system; three ClusterRoleBindings, as kubeadm
  makes them, let its holders ask for client certificates, have them approved
  by the controller-manager, and let nodes renew their own.
- Kubernetes approves no serving certificate by itself: that one names
  addresses, and only the mesh knows which addresses are a node's. A request is
  approved when it comes from the node it names (its own client credentials),
  asks for exactly a kubelet's usages, and names only that node's hostname, its
  loopback and its overlay IPv4 address, as the OSPFv3 view shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from mesh.site import Site

NODE_GROUP = "system:nodes"
NODE_PREFIX = "system:node:"
BOOTSTRAPPERS = "system:bootstrappers"
# kubeadm's group for its default node token: the same RBAC as kubeadm's clusters.
TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
SERVING_USAGES = frozenset({"digital signature", "key encipherment", "server auth"})


def bootstrap_token_secret(site: Site) -> dict[str, Any]:
    """The site's bootstrap token as Kubernetes reads it (no expiry: the site file
    holds it, and replacing it there is how it is rotated)."""
    token_id, secret = site.secrets.bootstrap_token.split(".")
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
        "stringData": {"token-id": token_id, "token-secret": secret,
                       "description": f"the {site.name} site's node bootstrap token",
                       "usage-bootstrap-authentication": "true",
                       "usage-bootstrap-signing": "true", "auth-extra-groups": TOKEN_GROUP},
    }


def role_bindings() -> list[dict[str, Any]]:
    """kubeadm's three bindings for node bootstrap, and nodes as kube-proxy."""
    def binding(name: str, role: str, group: str) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                          "name": group}],
        }
    csr = "system:certificates.k8s.io:certificatesigningrequests"
    return [binding("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", TOKEN_GROUP),
            binding("kubeadm:node-autoapprove-bootstrap", f"{csr}:nodeclient", TOKEN_GROUP),
            binding("kubeadm:node-autoapprove-certificate-rotation",
                    f"{csr}:selfnodeclient", NODE_GROUP),
            # kube-proxy runs on every node with the kubelet's client certificate.
            binding("kubermesh:node-proxier", "system:node-proxier", NODE_GROUP)]


@dataclass(frozen=True)
class MeshNode:
    """What the mesh says a node is: its hostname and the addresses it owns."""

    hostname: str
    loopback: IPv6Address
    node_ip: IPv4Address | None  # its pod block's node address, once it holds one

    @property
    def addresses(self) -> frozenset[IPv4Address | IPv6Address]:
        return frozenset({self.loopback, *([self.node_ip] if self.node_ip else [])})


@dataclass(frozen=True)
class ServingRequest:
    """A kubelet-serving CertificateSigningRequest, as far as approval goes."""

    name: str
    username: str
    groups: frozenset[str]
    usages: frozenset[str]
    request_pem: bytes


def serving_problem(req: ServingRequest, nodes: Mapping[str, MeshNode]) -> str | None:
    """Why the mesh does not vouch for `req`, or None: it may be approved."""
    if not req.username.startswith(NODE_PREFIX) or NODE_GROUP not in req.groups:
        return f"asked by {req.username}, not by a node"
    node = req.username.removeprefix(NODE_PREFIX)
    if node not in nodes:
        return f"{node} is no node of the mesh"
    if req.usages != SERVING_USAGES:
        return f"usages {sorted(req.usages)}, not a kubelet's {sorted(SERVING_USAGES)}"
    try:
        csr = x509.load_pem_x509_csr(req.request_pem)
    except ValueError as e:
        return f"not a certificate request: {e}"
    subject = {a.oid: a.value for a in csr.subject}
    if subject.get(NameOID.COMMON_NAME) != req.username or \
            subject.get(NameOID.ORGANIZATION_NAME) != NODE_GROUP:
        return f"subject {csr.subject.rfc4514_string()} is not {req.username} of {NODE_GROUP}"
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it names no address"
    want = nodes[node]
    dns = set(san.get_values_for_type(x509.DNSName)) - {want.hostname}
    ips = set(san.get_values_for_type(x509.IPAddress)) - set(want.addresses)
    if dns or ips:
        return (f"it names {', '.join(sorted(map(str, dns | ips)))}, which the mesh does not "
                f"know as {node}'s (it knows {', '.join(sorted(map(str, want.addresses)))})")
    return None
