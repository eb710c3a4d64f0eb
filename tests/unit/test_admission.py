"""Which kubelet-serving certificate requests the mesh vouches for, and the
bootstrap token's Secret and RBAC as Kubernetes reads them."""

from __future__ import annotations

import tomllib
from ipaddress import IPv4Address, IPv6Address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh import admission
from mesh.admission import MeshNode, ServingRequest
from mesh.site import new_site_toml, parse_site

NODE = MeshNode("km-aaaaaaaaaaaa", IPv6Address("fd00:1::aaaa"), IPv4Address("10.244.3.1"))
OTHER = MeshNode("km-bbbbbbbbbbbb", IPv6Address("fd00:1::bbbb"), IPv4Address("10.244.4.1"))
NODES = {n.hostname: n for n in (NODE, OTHER)}


def csr_pem(cn: str, org: str, dns: list[str], ips: list[IPv4Address | IPv6Address]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if dns or ips:
        b = b.add_extension(x509.SubjectAlternativeName(
            [*map(x509.DNSName, dns), *map(x509.IPAddress, ips)]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def request(user: str = "system:node:km-aaaaaaaaaaaa", cn: str | None = None,
            org: str = "system:nodes", dns: tuple[str, ...] = ("km-aaaaaaaaaaaa",),
            ips: tuple[IPv4Address | IPv6Address, ...] = (NODE.node_ip or NODE.loopback,
                                                          NODE.loopback),
            groups: frozenset[str] = frozenset({"system:nodes", "system:authenticated"}),
            usages: frozenset[str] = admission.SERVING_USAGES) -> ServingRequest:
    return ServingRequest("csr-1", user, groups, usages,
                          csr_pem(cn or user, org, list(dns), list(ips)))


def test_a_node_asking_for_its_own_names_and_addresses_is_approved() -> None:
    assert admission.serving_problem(request(), NODES) is None
    assert admission.serving_problem(request(ips=(NODE.loopback,)), NODES) is None


@pytest.mark.parametrize(("req", "said"), [
    (request(ips=(OTHER.loopback,)), "fd00:1::bbbb, which the mesh does not know"),
    (request(dns=("km-aaaaaaaaaaaa", "apiserver.example")), "apiserver.example"),
    (request(user="system:node:km-cccccccccccc"), "km-cccccccccccc is no node of the mesh"),
    (request(user="system:bootstrap:abcdef", groups=frozenset({"system:bootstrappers"})),
     "not by a node"),
    (request(cn="system:node:km-bbbbbbbbbbbb"), "subject"),
    (request(org="system:masters"), "subject"),
    (request(usages=frozenset({"digital signature", "client auth"})), "not a kubelet's"),
    (request(dns=(), ips=()), "names no address"),
])
def test_what_the_mesh_does_not_vouch_for_is_named(req: ServingRequest, said: str) -> None:
    problem = admission.serving_problem(req, NODES)
    assert problem is not None and said in problem, problem


def test_a_node_without_a_pod_block_yet_owns_only_its_loopback() -> None:
    young = {NODE.hostname: MeshNode(NODE.hostname, NODE.loopback, None)}
    assert "10.244.3.1" in (admission.serving_problem(request(), young) or "")


def test_the_bootstrap_token_and_kubeadms_bindings() -> None:
    site = parse_site(tomllib.loads(new_site_toml("warehouse")))
    secret = admission.bootstrap_token_secret(site)
    token_id, token = site.secrets.bootstrap_token.split(".")
    assert secret["metadata"] == {"name": f"bootstrap-token-{token_id}",
                                  "namespace": "kube-system"}
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    assert secret["stringData"]["token-secret"] == token
    assert secret["stringData"]["auth-extra-groups"] == admission.TOKEN_GROUP
    roles = {b["roleRef"]["name"]: b["subjects"][0]["name"] for b in admission.role_bindings()}
    assert roles == {
        "system:node-bootstrapper": admission.TOKEN_GROUP,
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient":
            admission.TOKEN_GROUP,
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient": "system:nodes",
        "system:node-proxier": "system:nodes",
    }
