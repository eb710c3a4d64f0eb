"""The site file: one warehouse, one cluster, one validated TOML file.

`load_site` turns the file into a frozen `Site` or raises `SiteError` listing
every problem, each naming its field. `new_site_toml` writes a fresh site with
random secrets and sensible defaults: among them the keys and self-signed
certificates of the boot-signing key and of the cluster CA (`sign_certificate`
makes every certificate, mesh.pki's too).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
import string
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import NameOID

from mesh import plan

SITE_VERSION = 1

DEFAULT_POD_RANGE = IPv4Network("10.244.0.0/14")  # 1024 blocks of /24
DEFAULT_SERVICE_RANGE = IPv4Network("10.96.0.0/12")  # the Kubernetes default
DEFAULT_POD_BLOCK = 24

# FRR 8.4 ospf6d stores the authentication key in a fixed-size buffer.
OSPF_KEY_MAX = 64
OSPF_KEY_ALPHABET = string.ascii_letters + string.digits
TOKEN_ALPHABET = string.ascii_lowercase + string.digits
BOOTSTRAP_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
SELF_SIGNED_DAYS = 3650  # the boot key's and the cluster CA's certificates
# What the cluster CA's and the service-account key may be (Kubernetes 1.20 takes both).
KUBERNETES_KEY = "an ECDSA P-256 or P-384 key or an RSA key of 2048 bits or more"


class SiteError(Exception):
    """A site file that cannot be used; `problems` are `field: what is wrong`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True)
class MeshSettings:
    ula: IPv6Network
    hello_interval: int = 1
    dead_interval: int = 3
    bfd_interval_ms: int = 100
    bfd_multiplier: int = 3
    # ospf6d's SPF throttle: first run after a change, then backing off from hold
    # to max_hold under churn (ms).
    spf_delay_ms: int = 0
    spf_hold_ms: int = 50
    spf_max_hold_ms: int = 1000
    # Interface names (shell globs) that are never mesh links, e.g. a management NIC.
    not_mesh: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodSettings:
    range: IPv4Network
    block_prefix: int = DEFAULT_POD_BLOCK

    @property
    def blocks(self) -> int:
        return 1 << (self.block_prefix - self.range.prefixlen)


@dataclass(frozen=True)
class ServiceSettings:
    range: IPv4Network


@dataclass(frozen=True)
class JoinSettings:
    policy: str  # manual, allow or auto (mesh.join)
    allow: tuple[str, ...]  # hardware identities or MAC globs approved at once (policy allow)


@dataclass(frozen=True)
class ControlPlaneSettings:
    ca_certificate: str  # PEM: the cluster CA, whose key is secrets.cluster_ca_key
    count: int = 3  # control-plane slots: etcd members and apiservers
    nodes: tuple[plan.HardwareIdentity, ...] = ()  # only these may hold one (empty: any)
    # Seconds a vacated slot waits for its holder before another takes it: a PC's
    # reboot (firmware included) comes back within it; replacing an etcd member is not
    # free, and Kubernetes itself waits 300 s before it evicts a lost node's pods.
    grace: int = 300
    # etcd's heartbeat and election timeout (ms): a dead etcd leader stalls writes,
    # and the apiservers' readiness, for about one election timeout.
    etcd_heartbeat_ms: int = 500
    etcd_election_ms: int = 5000


@dataclass(frozen=True)
class BootSettings:
    certificate: str  # PEM: the certificate PCs' firmware enrolls (UEFI db)


@dataclass(frozen=True)
class Secrets:
    ospf_key_id: int
    ospf_key: str
    bootstrap_token: str
    boot_key: str  # PEM: the private key that signs every UKI of the site's images
    cluster_ca_key: str  # PEM: the cluster CA's key (control_plane.ca_certificate)
    service_account_key: str  # PEM: signs the cluster's service-account tokens

    def __repr__(self) -> str:  # never print secrets by accident
        return "Secrets(<redacted>)"


@dataclass(frozen=True)
class Site:
    name: str
    mesh: MeshSettings
    pods: PodSettings
    services: ServiceSettings
    anycast: Mapping[str, IPv6Address]
    boot: BootSettings
    join: JoinSettings
    secrets: Secrets = field(repr=False)
    control_plane: ControlPlaneSettings


# --- field parsers: each returns the value or raises ValueError(what is wrong)


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"expected an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range {lo}..{hi}")
        return v

    return parse


def _str(pattern: re.Pattern[str] | None = None, hint: str = "") -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"expected a string, got {_kind(v)}")
        if pattern is not None and not pattern.match(v):
            raise ValueError(f"{v!r} is not {hint}")
        return v

    return parse


def _secret(pattern: re.Pattern[str], hint: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"expected a string, got {_kind(v)}")
        if not pattern.match(v):
            raise ValueError(f"the value is not {hint}")  # never echo a secret
        return v

    return parse


def _certificate(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a PEM certificate, got {_kind(v)}")
    try:
        x509.load_pem_x509_certificate(v.encode())
    except ValueError:
        raise ValueError("not a PEM X.509 certificate (BEGIN CERTIFICATE)") from None
    return v


def _ca_certificate(v: Any) -> str:
    pem = _certificate(v)
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError("not a CA certificate (basicConstraints CA:TRUE)")
    return pem


def _private_key(fits: Callable[[PrivateKeyTypes], bool], hint: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"expected a PEM private key, got {_kind(v)}")
        try:
            key = serialization.load_pem_private_key(v.encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("not an unencrypted PEM private key") from None  # never echo it
        if not fits(key):
            raise ValueError(f"not {hint}")
        return v

    return parse


def _rsa_2048(key: PrivateKeyTypes) -> bool:
    return isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048


def _kubernetes_key(key: PrivateKeyTypes) -> bool:
    """What Kubernetes 1.20 signs certificates and service-account tokens with."""
    return _rsa_2048(key) or (isinstance(key, ec.EllipticCurvePrivateKey)
                              and isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1))


def _policy(v: Any) -> str:
    if v not in ("manual", "allow", "auto"):
        raise ValueError(f"{v!r} is not manual, allow or auto")
    return str(v)


def _globs(what: str) -> Callable[[Any], tuple[str, ...]]:
    def parse(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ValueError(f"expected a list of {what}")
        return tuple(v)

    return parse


def _identities(v: Any) -> tuple[plan.HardwareIdentity, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError('expected a list of hardware identities, e.g. ["dmi:4c4c4544-…", '
                         '"mac:52:54:00:12:34:56"]')
    out = []
    for x in v:
        try:
            out.append(plan.HardwareIdentity.parse(x))
        except ValueError as e:
            raise ValueError(str(e)) from None
    if len(set(out)) != len(out):
        raise ValueError("a hardware identity is listed twice")
    return tuple(out)


def _ipv6_net(prefixlen: int) -> Callable[[Any], IPv6Network]:
    def parse(v: Any) -> IPv6Network:
        net = _network(v)
        if not isinstance(net, IPv6Network):
            raise ValueError(f"{v!r} is IPv4, expected an IPv6 /{prefixlen}")
        if net.prefixlen != prefixlen:
            raise ValueError(f"{v!r} is a /{net.prefixlen}, expected a /{prefixlen}")
        return net

    return parse


def _ula48(v: Any) -> IPv6Network:
    net = _ipv6_net(48)(v)
    if not net.subnet_of(IPv6Network("fd00::/8")):
        raise ValueError(f"{v!r} is not a unique local (RFC 4193) prefix in fd00::/8")
    return net


def _ipv4_net(shortest: int, longest: int) -> Callable[[Any], IPv4Network]:
    def parse(v: Any) -> IPv4Network:
        net = _network(v)
        if not isinstance(net, IPv4Network):
            raise ValueError(f"{v!r} is IPv6, expected an IPv4 prefix")
        if not shortest <= net.prefixlen <= longest:
            raise ValueError(
                f"{v!r} is a /{net.prefixlen}, expected /{shortest} to /{longest}"
            )
        if not net.is_private:
            raise ValueError(f"{v!r} is not a private (RFC 1918) range")
        return net

    return parse


def _ipv6_addr(v: Any) -> IPv6Address:
    if not isinstance(v, str):
        raise ValueError(f"expected an IPv6 address as a string, got {_kind(v)}")
    try:
        addr = ipaddress.ip_address(v.removesuffix("/128"))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None
    if not isinstance(addr, IPv6Address):
        raise ValueError(f"{v!r} is IPv4, expected an IPv6 address")
    return addr


def _network(v: Any) -> IPv4Network | IPv6Network:
    if not isinstance(v, str):
        raise ValueError(f"expected a prefix as a string, got {_kind(v)}")
    try:
        return ipaddress.ip_network(v, strict=True)
    except ValueError as e:
        raise ValueError(f"{v!r} is not a prefix ({e})") from None


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


_REQUIRED = object()

# One declarative table: section -> field -> (parser, default). It drives
# parsing, unknown-field detection and the defaults written by `site init`.
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "mesh": {
        "ula": (_ula48, _REQUIRED),
        "hello_interval": (_int(1, 60), 1),
        "dead_interval": (_int(2, 240), 3),
        "bfd_interval_ms": (_int(10, 10_000), 100),
        "bfd_multiplier": (_int(2, 255), 3),
        "spf_delay_ms": (_int(0, 600_000), 0),
        "spf_hold_ms": (_int(0, 600_000), 50),
        "spf_max_hold_ms": (_int(0, 600_000), 1000),
        "not_mesh": (_globs("interface names or globs"), []),
    },
    "pods": {
        "range": (_ipv4_net(8, 24), _REQUIRED),
        "block_prefix": (_int(16, 28), DEFAULT_POD_BLOCK),
    },
    "services": {
        "range": (_ipv4_net(8, 28), _REQUIRED),
    },
    "secrets": {
        "ospf_key_id": (_int(1, 65535), 1),
        "ospf_key": (
            _secret(re.compile(rf"^[A-Za-z0-9]{{16,{OSPF_KEY_MAX}}}$"),
                    f"16 to {OSPF_KEY_MAX} letters and digits"),
            _REQUIRED,
        ),
        "bootstrap_token": (
            _secret(BOOTSTRAP_TOKEN, "a Kubernetes bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})"),
            _REQUIRED,
        ),
        "boot_key": (
            _private_key(_rsa_2048,
                         "an RSA key of 2048 bits or more (what UEFI firmware checks)"),
            _REQUIRED,
        ),
        "cluster_ca_key": (_private_key(_kubernetes_key, KUBERNETES_KEY), _REQUIRED),
        "service_account_key": (_private_key(_kubernetes_key, KUBERNETES_KEY), _REQUIRED),
    },
    "boot": {
        "certificate": (_certificate, _REQUIRED),
    },
    "control_plane": {
        "ca_certificate": (_ca_certificate, _REQUIRED),
        "count": (_int(1, 7), ControlPlaneSettings.count),
        "nodes": (_identities, []),
        "grace": (_int(5, 3600), ControlPlaneSettings.grace),
        "etcd_heartbeat_ms": (_int(10, 10_000), ControlPlaneSettings.etcd_heartbeat_ms),
        "etcd_election_ms": (_int(50, 50_000), ControlPlaneSettings.etcd_election_ms),
    },
    "join": {
        "policy": (_policy, "manual"),
        "allow": (_globs('hardware identities or MAC globs, e.g. ["mac:52:54:00:*", '
                         '"52:54:00:12:*", "dmi:4c4c4544-*"]'), []),
    },
}
TOP_LEVEL = {"version", "name", *SCHEMA, "anycast"}
REQUIRED_ANYCAST = ("apiserver", "etcd")


def parse_site(data: Mapping[str, Any], source: str = "site") -> Site:
    """Validate parsed TOML; raise SiteError naming every bad field."""
    problems: list[str] = []
    for key in data:
        if key not in TOP_LEVEL:
            known = ", ".join(sorted(TOP_LEVEL))
            problems.append(f"{key}: unknown field (expected one of {known})")
    version = data.get("version", _REQUIRED)
    if version is _REQUIRED:
        problems.append("version: missing (this release reads version = 1)")
    elif version != SITE_VERSION:
        problems.append(f"version: {version!r} is not supported (this release reads version = 1)")
    name = _field(data, "name", _str(NAME, "a lower-case name (a-z, 0-9, -)"), _REQUIRED,
                  "name", problems)

    values: dict[str, dict[str, Any]] = {}
    for section, fields in SCHEMA.items():
        table = data.get(section)
        if table is None:
            table = {}
            if any(d is _REQUIRED for _, d in fields.values()):
                problems.append(f"{section}: missing table [{section}]")
                continue
        if not isinstance(table, dict):
            problems.append(f"{section}: expected a table [{section}], got {_kind(table)}")
            continue
        for key in table:
            if key not in fields:
                problems.append(
                    f"{section}.{key}: unknown field (expected one of {', '.join(fields)})"
                )
        values[section] = {
            key: _field(table, key, parser, default, f"{section}.{key}", problems)
            for key, (parser, default) in fields.items()
        }

    anycast: dict[str, IPv6Address] = {}
    table = data.get("anycast")
    if not isinstance(table, dict):
        problems.append("anycast: missing table [anycast] of service = address")
    else:
        for svc in REQUIRED_ANYCAST:
            if svc not in table:
                problems.append(f"anycast.{svc}: missing")
        for svc, _raw in table.items():
            if not NAME.match(svc):
                problems.append(f"anycast.{svc}: not a service name (a-z, 0-9, -)")
                continue
            addr = _field(table, svc, _ipv6_addr, _REQUIRED, f"anycast.{svc}", problems)
            if addr is not None:
                anycast[svc] = addr

    if problems:
        raise SiteError(source, problems)
    site = Site(
        name=name,
        mesh=MeshSettings(**values["mesh"]),
        pods=PodSettings(**values["pods"]),
        services=ServiceSettings(**values["services"]),
        anycast=anycast,
        boot=BootSettings(**values["boot"]),
        join=JoinSettings(values["join"]["policy"], tuple(values["join"]["allow"])),
        secrets=Secrets(**values["secrets"]),
        control_plane=ControlPlaneSettings(**values["control_plane"]),
    )
    problems = _cross_checks(site)
    if problems:
        raise SiteError(source, problems)
    return site


def _field(table: Mapping[str, Any], key: str, parser: Callable[[Any], Any], default: Any,
           where: str, problems: list[str]) -> Any:
    if key not in table:
        if default is _REQUIRED:
            problems.append(f"{where}: missing")
            return None
        return tuple(default) if isinstance(default, list) else default
    try:
        return parser(table[key])
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return None


def _cross_checks(site: Site) -> list[str]:
    problems = []
    m, pods, svc = site.mesh, site.pods, site.services
    if m.dead_interval <= m.hello_interval:
        problems.append(
            f"mesh.dead_interval: {m.dead_interval} s must be longer than "
            f"mesh.hello_interval ({m.hello_interval} s)"
        )
    if m.spf_max_hold_ms < m.spf_hold_ms:
        problems.append(f"mesh.spf_max_hold_ms: {m.spf_max_hold_ms} ms must not be shorter "
                        f"than mesh.spf_hold_ms ({m.spf_hold_ms} ms)")
    if pods.block_prefix <= pods.range.prefixlen:
        problems.append(
            f"pods.block_prefix: /{pods.block_prefix} must be longer than pods.range "
            f"(/{pods.range.prefixlen})"
        )
    if pods.range.overlaps(svc.range):
        problems.append(f"services.range: {svc.range} overlaps pods.range {pods.range}")
    cp = site.control_plane
    if cp.etcd_election_ms < 5 * cp.etcd_heartbeat_ms:
        problems.append(f"control_plane.etcd_election_ms: {cp.etcd_election_ms} ms must be at "
                        f"least 5 times control_plane.etcd_heartbeat_ms "
                        f"({cp.etcd_heartbeat_ms} ms): etcd refuses to start otherwise")
    if not _certifies(site.boot.certificate, site.secrets.boot_key):
        problems.append("boot.certificate: not the certificate of secrets.boot_key")
    if not _certifies(cp.ca_certificate, site.secrets.cluster_ca_key):
        problems.append("control_plane.ca_certificate: not the certificate of "
                        "secrets.cluster_ca_key")
    if cp.nodes and len(cp.nodes) < cp.count:
        problems.append(f"control_plane.nodes: {len(cp.nodes)} listed, fewer than "
                        f"control_plane.count ({cp.count}) slots")
    seen: dict[IPv6Address, str] = {}
    for name, addr in site.anycast.items():
        if addr not in m.ula:
            problems.append(f"anycast.{name}: {addr} is outside the site prefix mesh.ula {m.ula}")
        elif addr not in plan.anycast_subnet(m.ula):
            problems.append(
                f"anycast.{name}: {addr} is not in the anycast subnet "
                f"{plan.anycast_subnet(m.ula)} of mesh.ula"
            )
        if addr in seen:
            problems.append(f"anycast.{name}: {addr} is also anycast.{seen[addr]}")
        seen[addr] = name
    return problems


def _certifies(cert: str, key: str) -> bool:
    """Whether the PEM certificate is that of the PEM private key."""
    public = x509.load_pem_x509_certificate(cert.encode()).public_key()
    return public == serialization.load_pem_private_key(key.encode(), None).public_key()


def load_site(path: Path) -> Site:
    """Read and validate a site file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise SiteError(str(path), [f"cannot read the file ({e.strerror})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SiteError(str(path), [f"not valid TOML ({e})"]) from None
    return parse_site(data, str(path))


def random_ula() -> IPv6Network:
    """An RFC 4193 /48: fd00::/8 plus a 40-bit random global ID."""
    global_id = secrets.randbits(40)
    return IPv6Network(((0xFD << 120) | (global_id << 80), 48))


def random_bootstrap_token() -> str:
    return f"{_random_string(6, TOKEN_ALPHABET)}.{_random_string(16, TOKEN_ALPHABET)}"


def _random_string(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def sign_certificate(subject: x509.Name, key: CertificatePublicKeyTypes, issuer: x509.Name,
                     signer: CertificateIssuerPrivateKeyTypes, days: int,
                     extensions: Sequence[tuple[x509.ExtensionType, bool]],
                     now: datetime.datetime | None = None) -> str:
    """A certificate (PEM) of `key` for `subject`, signed with SHA-256 by `signer`,
    the key of `issuer`; valid `days` from `now`, and from a day before it for
    clocks that are behind. `extensions` are (extension, critical)."""
    now = now or datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=days)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def private_pem(key: PrivateKeyTypes) -> str:
    """An unencrypted PKCS #8 PEM: what UEFI signing tools and Kubernetes both read."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, common_name: str,
                 extensions: Sequence[tuple[x509.ExtensionType, bool]]) -> tuple[str, str]:
    """The key and its self-signed certificate (PEM), for SELF_SIGNED_DAYS."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = sign_certificate(name, key.public_key(), name, key, SELF_SIGNED_DAYS, extensions)
    return private_pem(key), cert


def new_boot_key(name: str) -> tuple[str, str]:
    """A fresh boot-signing key and its self-signed certificate (PEM), for 10 years.
    RSA 2048 with SHA-256: what every UEFI firmware's db verifies."""
    return _self_signed(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        f"Kubermesh boot key: {name}",
        [(x509.BasicConstraints(ca=False, path_length=None), True),
         (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), False)])


def new_cluster_ca(name: str) -> tuple[str, str]:
    """A fresh Kubernetes cluster CA: its key and self-signed certificate (PEM), for
    10 years, with the key usages kubeadm gives its CA. ECDSA P-256: fast to make
    and to verify, and what Kubernetes 1.20 accepts for every certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _self_signed(
        key, f"{name} cluster CA",
        [(x509.BasicConstraints(ca=True, path_length=None), True),
         (x509.KeyUsage(digital_signature=True, content_commitment=False,
                        key_encipherment=True, data_encipherment=False, key_agreement=False,
                        key_cert_sign=True, crl_sign=False, encipher_only=False,
                        decipher_only=False), True),
         (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)])


def new_service_account_key() -> str:
    """A fresh key (PEM) for service-account tokens: ECDSA P-256, tokens are ES256."""
    return private_pem(ec.generate_private_key(ec.SECP256R1()))


def certificate_der(pem: str) -> bytes:
    """A PEM certificate in DER, the form firmware setup menus and KeyTool enroll."""
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def new_site_toml(name: str = "site", pod_range: IPv4Network = DEFAULT_POD_RANGE,
                  service_range: IPv4Network = DEFAULT_SERVICE_RANGE,
                  timers: Mapping[str, int] | None = None) -> str:
    """A fresh, commented site file with random ULA and secrets; `timers` overrides
    some of [mesh]'s hello_interval, dead_interval, bfd_interval_ms, bfd_multiplier
    and spf_*_ms."""
    ula = random_ula()
    anycast = plan.anycast_subnet(ula)
    key = _random_string(32, OSPF_KEY_ALPHABET)
    boot_key, boot_cert = new_boot_key(name)
    ca_key, ca_cert = new_cluster_ca(name)
    d = {k: v for k, (_, v) in SCHEMA["mesh"].items()}
    unknown = set(timers or {}) - {"hello_interval", "dead_interval", "bfd_interval_ms",
                                   "bfd_multiplier", "spf_delay_ms", "spf_hold_ms",
                                   "spf_max_hold_ms"}
    if unknown:
        raise ValueError(f"not a timer of [mesh]: {', '.join(sorted(unknown))}")
    d.update(timers or {})
    return f"""\
# Kubermesh site: one warehouse, one cluster. Created by `kubermesh site init`.
# Check it with `kubermesh site check FILE`; bake it into an image with
# `kubermesh build --site FILE`. The [secrets] table must stay private.
version = {SITE_VERSION}
name = "{name}"

[mesh]
# Unique local /48 (RFC 4193) holding every node loopback and anycast address.
ula = "{ula}"
# OSPFv3 hello/dead intervals in seconds, on every mesh link.
hello_interval = {d["hello_interval"]}
dead_interval = {d["dead_interval"]}
# BFD on every OSPFv3 link: a dead neighbour is noticed after interval x multiplier.
bfd_interval_ms = {d["bfd_interval_ms"]}
bfd_multiplier = {d["bfd_multiplier"]}
# ospf6d's shortest-path runs (ms): the first spf_delay_ms after a change, then
# no more often than every spf_hold_ms, backing off to spf_max_hold_ms under
# churn. 0 reroutes at once; longer waits batch changes where many nodes share
# a few CPUs (a big lab).
spf_delay_ms = {d["spf_delay_ms"]}
spf_hold_ms = {d["spf_hold_ms"]}
spf_max_hold_ms = {d["spf_max_hold_ms"]}
# Interfaces (globs) that are never mesh links, e.g. ["mgmt*"].
not_mesh = []

[pods]
# IPv4 range for pods; each node owns one block of /block_prefix from it.
range = "{pod_range}"
block_prefix = {DEFAULT_POD_BLOCK}

[services]
# Kubernetes service (ClusterIP) range.
range = "{service_range}"

[anycast]
# One /128 per cluster-wide service, announced by the nodes that run it.
apiserver = "{anycast.network_address + 1}"
etcd = "{anycast.network_address + 2}"

[control_plane]
# How many nodes run etcd and the Kubernetes control plane (1, 3, 5 or 7: etcd
# needs a majority). Nodes take these slots themselves; when a holder stays
# unreachable for `grace` seconds, another node takes its slot.
count = 3
grace = 300
# etcd's heartbeat and election timeout (ms). A dead etcd leader stalls writes,
# and so the apiserver's anycast address, for about one election timeout
# (measured: 5-7 s at 500/5000; etcd's LAN default is 100/1000, which cost an
# emulated PC a sixth of its CPU when idle). The election timeout must be at
# least 5 heartbeats.
etcd_heartbeat_ms = 500
etcd_election_ms = 5000
# Only these PCs may hold a slot (hardware identities as `kubermesh status`
# shows them, e.g. "dmi:4c4c4544-…"); empty: any node.
nodes = []
# The cluster CA: slot holders issue the control plane's certificates with its
# key (secrets.cluster_ca_key); kubectl and kubelets verify the apiserver with it.
ca_certificate = '''
{ca_cert}'''

[join]
# Who gets this file's secrets when a netbooted PC asks to join:
#   manual  an operator approves each one (kubermesh nodes pending / approve ID)
#   allow   PCs whose hardware identity or MAC matches a glob of `allow`, at once
#   auto    every PC that asks (labs only: anyone at a mesh port gets the keys)
policy = "manual"
allow = []

[boot]
# Every UKI of the site's images is signed with secrets.boot_key. Enroll this
# certificate in PCs' firmware (UEFI db; `kubermesh site boot-cert FILE` exports
# it) and turn Secure Boot on: they then boot the site's images and nothing else.
certificate = '''
{boot_cert}'''

[secrets]
# OSPFv3 authentication trailer (HMAC-SHA-256): a PC without it injects no route.
ospf_key_id = 1
ospf_key = "{key}"
# Kubernetes bootstrap token for joining nodes.
bootstrap_token = "{random_bootstrap_token()}"
# Signs the site's UKIs (kubermesh build); its certificate is boot.certificate.
boot_key = '''
{boot_key}'''
# The cluster CA's key: whoever holds it can act as anyone in the cluster.
cluster_ca_key = '''
{ca_key}'''
# Signs the cluster's service-account tokens (ES256).
service_account_key = '''
{new_service_account_key()}'''
"""
