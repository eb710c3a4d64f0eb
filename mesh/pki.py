"""The cluster's certificates: every file a control-plane slot holder's
kube-apiserver, kube-controller-manager and kube-scheduler read, issued from the
site's cluster CA (control_plane.ca_certificate, secrets.cluster_ca_key).

The files are those `kubeadm init phase certs` and `kubeadm init phase
kubeconfig` write for 1.20, with the same names, subjects and key usages, but
each slot holder issues its own: holders exchange no keys, and a node that
takes a slot needs nothing from the others. Unlike kubeadm's:
- keys are ECDSA P-256 (the CA's too; service-account tokens are ES256);
- the apiserver's serving certificate also names the apiserver's anycast
  address and the holder's loopback, so a client verifies whichever holder the
  anycast address reaches;
- no front-proxy or etcd certificates: no aggregated APIs yet, and etcd talks
  plain HTTP between the holders.
Pure: keys are made here, nothing is read or written.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh import render
from mesh.site import Site, private_pem, sign_certificate

LEAF_DAYS = 365  # kubeadm's; renewal is not built yet
CLUSTER_DOMAIN = "cluster.local"
MASTERS = "system:masters"  # the group RBAC grants everything
PUBLIC, SECRET = 0o644, 0o600
# kubeconfig -> its client certificate's CN (user) and O (group), as kubeadm's
KUBECONFIGS: dict[str, tuple[str, str | None]] = {
    "admin.conf": ("kubernetes-admin", MASTERS),
    "controller-manager.conf": ("system:kube-controller-manager", None),
    "scheduler.conf": ("system:kube-scheduler", None),
}

_env = render.environment("mesh")


def ca_certificate(site: Site) -> str:
    """The cluster CA's certificate (PEM): what clients verify the apiserver with."""
    return site.control_plane.ca_certificate


def kubernetes_service_ip(site: Site) -> IPv4Address:
    """The `kubernetes` service's ClusterIP: the first address of the service
    range, which the apiserver reserves for itself."""
    return site.services.range.network_address + 1


def apiserver_names(site: Site, hostname: str,
                    loopback: IPv6Address) -> list[x509.GeneralName]:
    """What the apiserver's serving certificate names: the `kubernetes` service
    (its names and ClusterIP), the anycast address, the holder and localhost."""
    dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
           f"kubernetes.default.svc.{CLUSTER_DOMAIN}", hostname]
    ips: list[IPv4Address | IPv6Address] = [
        site.anycast["apiserver"], loopback, IPv6Address("::1"), IPv4Address("127.0.0.1"),
        kubernetes_service_ip(site)]
    return [*map(x509.DNSName, dns), *map(x509.IPAddress, ips)]


@dataclass(frozen=True)
class _CA:
    """The site's cluster CA, issuing certificates valid LEAF_DAYS from `now`."""

    site: Site
    name: x509.Name
    key: CertificateIssuerPrivateKeyTypes
    now: datetime

    @classmethod
    def of(cls, site: Site, now: datetime | None) -> _CA:
        key = serialization.load_pem_private_key(site.secrets.cluster_ca_key.encode(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)  # mesh.site
        cert = x509.load_pem_x509_certificate(ca_certificate(site).encode())
        return cls(site, cert.subject, key, now or datetime.now(UTC))

    def issue(self, common_name: str, group: str | None, usage: x509.ObjectIdentifier,
              names: Sequence[x509.GeneralName] = ()) -> tuple[str, str]:
        """A fresh key and its certificate, (certificate, key) in PEM, for `usage`
        (serverAuth or clientAuth) with kubeadm's key usages."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, group)] if group else [])
            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.KeyUsage(digital_signature=True, content_commitment=False,
                           key_encipherment=True, data_encipherment=False, key_agreement=False,
                           key_cert_sign=False, crl_sign=False, encipher_only=False,
                           decipher_only=False), True),
            (x509.ExtendedKeyUsage([usage]), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False),
        ]
        if names:
            extensions.append((x509.SubjectAlternativeName(names), False))
        cert = sign_certificate(subject, key.public_key(), self.name, self.key, LEAF_DAYS,
                                extensions, self.now)
        return cert, private_pem(key)

    def kubeconfig(self, conf: str, server: str) -> str:
        """The kubeconfig `conf` (one of KUBECONFIGS), its credentials inside."""
        user, group = KUBECONFIGS[conf]
        cert, key = self.issue(user, group, ExtendedKeyUsageOID.CLIENT_AUTH)
        return _env.get_template("client-kubeconfig.j2").render(
            cluster=self.site.name, server=server, user=user, context=f"{user}@{self.site.name}",
            ca_data=_base64(ca_certificate(self.site)), cert_data=_base64(cert),
            key_data=_base64(key))


def holder_files(site: Site, hostname: str, loopback: IPv6Address, server: str,
                 now: datetime | None = None) -> dict[str, tuple[str, int]]:
    """Every file a control-plane slot holder's kube-apiserver, kube-controller-manager
    and kube-scheduler read, as relative file name -> (content, mode). The
    kubeconfigs name `server`; keys and kubeconfigs are for root only."""
    ca = _CA.of(site, now)
    serving = ca.issue("kube-apiserver", None, ExtendedKeyUsageOID.SERVER_AUTH,
                       apiserver_names(site, hostname, loopback))
    kubelet_client = ca.issue("kube-apiserver-kubelet-client", MASTERS,
                              ExtendedKeyUsageOID.CLIENT_AUTH)
    return {
        "ca.crt": (ca_certificate(site), PUBLIC),
        # The controller-manager signs kubelets' client certificates with it.
        "ca.key": (site.secrets.cluster_ca_key, SECRET),
        **_pair("apiserver", serving),
        **_pair("apiserver-kubelet-client", kubelet_client),
        "sa.key": (site.secrets.service_account_key, SECRET),
        "sa.pub": (_public_pem(site.secrets.service_account_key), PUBLIC),
        **{conf: (ca.kubeconfig(conf, server), SECRET) for conf in KUBECONFIGS},
    }


def admin_kubeconfig(site: Site, server: str, now: datetime | None = None) -> str:
    """A kubeconfig of the cluster's administrator (system:masters) for `server`,
    e.g. the apiserver's anycast address."""
    return _CA.of(site, now).kubeconfig("admin.conf", server)


def _pair(stem: str, cert_key: tuple[str, str]) -> dict[str, tuple[str, int]]:
    cert, key = cert_key
    return {f"{stem}.crt": (cert, PUBLIC), f"{stem}.key": (key, SECRET)}


def _public_pem(private: str) -> str:
    key = serialization.load_pem_private_key(private.encode(), None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _base64(pem: str) -> str:
    return base64.b64encode(pem.encode()).decode()
