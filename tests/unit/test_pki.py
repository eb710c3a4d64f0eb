"""The cluster's certificates (mesh/pki.py): every file a slot holder's control
plane reads, issued by the site's cluster CA, with the names, usages and modes
that the apiserver, its clients and kubelets check."""

from __future__ import annotations

import base64
import tomllib
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mesh import pki
from mesh.site import Site, new_site_toml, parse_site

HOSTNAME = "km-0123456789ab"
LOOPBACK = IPv6Address("fd00:1::aaaa:aaaa:aaaa:aaaa")
SERVER = f"https://[{LOOPBACK}]:6443"
NOW = datetime.now(UTC).replace(microsecond=0)  # within the site CA's validity
KUBECONFIGS = {  # file -> its client certificate's (CN, O)
    "admin.conf": ("kubernetes-admin", "system:masters"),
    "controller-manager.conf": ("system:kube-controller-manager", None),
    "scheduler.conf": ("system:kube-scheduler", None),
}


@pytest.fixture(scope="module")
def site() -> Site:
    return parse_site(tomllib.loads(new_site_toml("warehouse")))


@pytest.fixture(scope="module")
def files(site: Site) -> dict[str, tuple[str, int]]:
    return pki.holder_files(site, HOSTNAME, LOOPBACK, SERVER, NOW)


def cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def public_key_of(key_pem: str) -> Any:
    return serialization.load_pem_private_key(key_pem.encode(), None).public_key()


def subject(c: x509.Certificate) -> tuple[str, str | None]:
    def first(oid: x509.ObjectIdentifier) -> str | None:
        values = c.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else None

    return first(NameOID.COMMON_NAME) or "", first(NameOID.ORGANIZATION_NAME)


def ext_usages(c: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def kubeconfig(text: str) -> dict[str, Any]:
    conf: dict[str, Any] = yaml.safe_load(text)
    return conf


def embedded(conf: dict[str, Any], where: str, key: str) -> str:
    [entry] = conf[where]
    return base64.b64decode(entry[where[:-1]][key]).decode()


def test_the_files_and_their_modes(site: Site, files: dict[str, tuple[str, int]]) -> None:
    assert set(files) == {"ca.crt", "ca.key", "apiserver.crt", "apiserver.key",
                          "apiserver-kubelet-client.crt", "apiserver-kubelet-client.key",
                          "sa.key", "sa.pub", *KUBECONFIGS}
    for name, (_, mode) in files.items():
        secret = name.endswith((".key", ".conf"))
        assert mode == (0o600 if secret else 0o644), name
    assert files["ca.crt"][0] == site.control_plane.ca_certificate == pki.ca_certificate(site)
    assert files["ca.key"][0] == site.secrets.cluster_ca_key
    assert files["sa.key"][0] == site.secrets.service_account_key


def test_every_certificate_is_issued_by_the_site_ca(files: dict[str, tuple[str, int]]) -> None:
    ca = cert(files["ca.crt"][0])
    for stem in ("apiserver", "apiserver-kubelet-client"):
        leaf = cert(files[f"{stem}.crt"][0])
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)  # raises if the CA's key did not sign it
        assert leaf.public_key() == public_key_of(files[f"{stem}.key"][0])
        public = leaf.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
        assert leaf.not_valid_after_utc == NOW + timedelta(days=365)
        assert leaf.not_valid_before_utc <= NOW
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign


def test_the_serving_certificate(site: Site, files: dict[str, tuple[str, int]]) -> None:
    serving = cert(files["apiserver.crt"][0])
    assert ext_usages(serving) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local", HOSTNAME}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        site.anycast["apiserver"], LOOPBACK, ip_address("::1"), ip_address("127.0.0.1"),
        IPv4Address("10.96.0.1")}
    assert pki.kubernetes_service_ip(site) == IPv4Address("10.96.0.1")


@pytest.mark.parametrize("name", ["anycast", "loopback", "hostname", "kubernetes.default.svc",
                                  "service-ip"])
def test_a_client_verifies_the_apiserver_by_every_name(
        site: Site, files: dict[str, tuple[str, int]], name: str) -> None:
    """As kubectl does: a chain to the site CA, for the name it dialled."""
    names: dict[str, x509.DNSName | x509.IPAddress] = {
        "anycast": x509.IPAddress(site.anycast["apiserver"]), "loopback": x509.IPAddress(LOOPBACK),
        "hostname": x509.DNSName(HOSTNAME),
        "kubernetes.default.svc": x509.DNSName("kubernetes.default.svc"),
        "service-ip": x509.IPAddress(pki.kubernetes_service_ip(site))}
    serving = cert(files["apiserver.crt"][0])
    policy = PolicyBuilder().store(Store([cert(files["ca.crt"][0])])).time(NOW)
    assert len(policy.build_server_verifier(names[name]).verify(serving, [])) == 2
    with pytest.raises(VerificationError):
        policy.build_server_verifier(x509.DNSName("elsewhere")).verify(serving, [])


def test_the_apiserver_kubelet_client(files: dict[str, tuple[str, int]]) -> None:
    client = cert(files["apiserver-kubelet-client.crt"][0])
    assert subject(client) == ("kube-apiserver-kubelet-client", "system:masters")
    assert ext_usages(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_the_service_account_keys_are_a_pair(files: dict[str, tuple[str, int]]) -> None:
    public = serialization.load_pem_public_key(files["sa.pub"][0].encode())
    assert public == public_key_of(files["sa.key"][0])
    assert "PRIVATE" not in files["sa.pub"][0]


@pytest.mark.parametrize("name", list(KUBECONFIGS))
def test_the_kubeconfigs(site: Site, files: dict[str, tuple[str, int]], name: str) -> None:
    conf = kubeconfig(files[name][0])
    [cluster] = conf["clusters"]
    assert cluster["cluster"]["server"] == SERVER
    assert embedded(conf, "clusters", "certificate-authority-data") == files["ca.crt"][0]
    assert conf["current-context"] == conf["contexts"][0]["name"]
    assert conf["contexts"][0]["context"]["cluster"] == cluster["name"] == site.name
    client = cert(embedded(conf, "users", "client-certificate-data"))
    assert subject(client) == KUBECONFIGS[name]
    assert conf["users"][0]["name"] == KUBECONFIGS[name][0]
    assert ext_usages(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    client.verify_directly_issued_by(cert(files["ca.crt"][0]))
    assert client.public_key() == public_key_of(embedded(conf, "users", "client-key-data"))


def test_admin_kubeconfig(site: Site) -> None:
    anycast = f"https://[{site.anycast['apiserver']}]:6443"
    conf = kubeconfig(pki.admin_kubeconfig(site, anycast))
    assert conf["clusters"][0]["cluster"]["server"] == anycast
    client = cert(embedded(conf, "users", "client-certificate-data"))
    assert subject(client) == ("kubernetes-admin", "system:masters")
    assert client.not_valid_before_utc <= datetime.now(UTC) < client.not_valid_after_utc


def test_each_issue_makes_fresh_keys(site: Site, files: dict[str, tuple[str, int]]) -> None:
    again = pki.holder_files(site, HOSTNAME, LOOPBACK, SERVER, NOW)
    assert again["apiserver.key"][0] != files["apiserver.key"][0]
    assert again["ca.crt"] == files["ca.crt"]
