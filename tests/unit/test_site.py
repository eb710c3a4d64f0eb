"""The site file: fresh sites validate; every kind of bad input names its field."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mesh import plan
from mesh.site import (
    SiteError,
    load_site,
    new_boot_key,
    new_cluster_ca,
    new_site_toml,
    parse_site,
    private_pem,
    random_ula,
)


def fresh() -> dict[str, Any]:
    return tomllib.loads(new_site_toml("test"))


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SiteError) as e:
        parse_site(data, "site.toml")
    return e.value.problems


def test_fresh_site_is_valid_and_has_fresh_values() -> None:
    a, b = parse_site(fresh()), parse_site(fresh())
    assert a.mesh.ula != b.mesh.ula
    assert a.secrets.ospf_key != b.secrets.ospf_key
    assert a.secrets.bootstrap_token != b.secrets.bootstrap_token
    assert a.secrets.cluster_ca_key != b.secrets.cluster_ca_key
    assert a.secrets.service_account_key != b.secrets.service_account_key
    assert a.pods.blocks >= 400  # a warehouse of ~400 nodes
    for addr in a.anycast.values():
        assert addr in plan.anycast_subnet(a.mesh.ula)
    assert set(a.anycast) == {"apiserver", "etcd"}


def test_random_ula_is_rfc4193() -> None:
    for _ in range(50):
        ula = random_ula()
        assert ula.prefixlen == 48 and ula.subnet_of(IPv6Network("fd00::/8"))


def test_secrets_never_in_repr() -> None:
    s = parse_site(fresh())
    for secret in (s.secrets.ospf_key, s.secrets.bootstrap_token, s.secrets.boot_key,
                   s.secrets.cluster_ca_key, s.secrets.service_account_key):
        assert secret not in repr(s)
        assert secret not in repr(s.secrets)
    assert "PRIVATE" not in repr(s)


def test_fresh_cluster_ca() -> None:
    s = parse_site(fresh())
    ca = x509.load_pem_x509_certificate(s.control_plane.ca_certificate.encode())
    assert ca.subject.rfc4514_string() == "CN=test cluster CA" and ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 3651
    for pem in (s.secrets.cluster_ca_key, s.secrets.service_account_key):
        key = serialization.load_pem_private_key(pem.encode(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda d: d["mesh"].update(ula=48), "mesh.ula", "expected a prefix as a string"),
        (lambda d: d["mesh"].update(ula="fd00:1:2:3::/64"), "mesh.ula", "is a /64, expected a /48"),
        (lambda d: d["mesh"].update(ula="10.0.0.0/8"), "mesh.ula", "is IPv4"),
        (lambda d: d["mesh"].update(ula="2001:db8:1::/48"), "mesh.ula", "unique local"),
        (lambda d: d["mesh"].update(ula="fd00:zz::/48"), "mesh.ula", "not a prefix"),
        (lambda d: d["pods"].update(range="fd00::/64"), "pods.range", "is IPv6"),
        (lambda d: d["pods"].update(range="10.0.0.0/28"), "pods.range", "expected /8 to /24"),
        (lambda d: d["pods"].update(range="8.8.0.0/16"), "pods.range", "private"),
        (lambda d: d["services"].update(range="10.244.4.0/24"), "services.range", "overlaps"),
        (lambda d: d["mesh"].update(hello_interval="1"), "mesh.hello_interval", "integer"),
        (lambda d: d["mesh"].update(hello_interval=True), "mesh.hello_interval", "integer"),
        (lambda d: d["mesh"].update(bfd_interval_ms=1), "mesh.bfd_interval_ms", "out of range"),
        (lambda d: d["mesh"].update(hello_interval=3), "mesh.dead_interval", "longer than"),
        (lambda d: d["mesh"].update(spf_hold_ms=2000), "mesh.spf_max_hold_ms", "not be shorter"),
        (lambda d: d["mesh"].update(spf_delay_ms=-1), "mesh.spf_delay_ms", "out of range"),
        (lambda d: d["control_plane"].update(etcd_heartbeat_ms=2000),
         "control_plane.etcd_election_ms", "at least 5 times"),
        (lambda d: d["control_plane"].update(etcd_election_ms=20),
         "control_plane.etcd_election_ms", "out of range"),
        (lambda d: d["mesh"].pop("ula"), "mesh.ula", "missing"),
        (lambda d: d.pop("secrets"), "secrets", "missing table"),
        (lambda d: d["mesh"].update(colour="blue"), "mesh.colour", "unknown field"),
        (lambda d: d.update(extra=1), "extra", "unknown field"),
        (lambda d: d["anycast"].update(apiserver="fd99::1"), "anycast.apiserver", "outside"),
        (lambda d: d["anycast"].update(etcd="10.0.0.1"), "anycast.etcd", "is IPv4"),
        (lambda d: d["anycast"].pop("apiserver"), "anycast.apiserver", "missing"),
        (lambda d: d["secrets"].update(ospf_key="short"), "secrets.ospf_key", "16 to 64"),
        (lambda d: d["secrets"].update(bootstrap_token="x"), "secrets.bootstrap_token", "token"),
        (lambda d: d.update(version=2), "version", "not supported"),
        (lambda d: d["secrets"].pop("boot_key"), "secrets.boot_key", "missing"),
        (lambda d: d["secrets"].update(boot_key="x"), "secrets.boot_key", "PEM private key"),
        (lambda d: d["boot"].update(certificate="x"), "boot.certificate", "PEM X.509"),
        (lambda d: d["boot"].update(certificate=new_boot_key("another")[1]), "boot.certificate",
         "not the certificate of secrets.boot_key"),
        (lambda d: d["pods"].update(block_prefix=14), "pods.block_prefix", "out of range"),
        (lambda d: d["control_plane"].pop("ca_certificate"), "control_plane.ca_certificate",
         "missing"),
        (lambda d: d["control_plane"].update(ca_certificate=new_cluster_ca("another")[1]),
         "control_plane.ca_certificate", "not the certificate of secrets.cluster_ca_key"),
        (lambda d: d["control_plane"].update(ca_certificate=d["boot"]["certificate"]),
         "control_plane.ca_certificate", "not a CA certificate"),
        (lambda d: d["control_plane"].update(ca_certificate="x"), "control_plane.ca_certificate",
         "PEM X.509"),
        (lambda d: d["secrets"].pop("cluster_ca_key"), "secrets.cluster_ca_key", "missing"),
        (lambda d: d["secrets"].update(cluster_ca_key="x"), "secrets.cluster_ca_key",
         "PEM private key"),
        (lambda d: d["secrets"].pop("service_account_key"), "secrets.service_account_key",
         "missing"),
        (lambda d: d["secrets"].update(
            service_account_key=private_pem(ed25519.Ed25519PrivateKey.generate())),
         "secrets.service_account_key", "not an ECDSA P-256 or P-384 key"),
        (lambda d: d["secrets"].update(boot_key=d["secrets"]["service_account_key"]),
         "secrets.boot_key", "not an RSA key"),
    ],
)
def test_bad_field_is_named(mutate: Any, field: str, words: str) -> None:
    data = fresh()
    mutate(data)
    found = problems(data)
    assert any(p.startswith(f"{field}:") and words in p for p in found), found


def test_anycast_outside_anycast_subnet_and_duplicates() -> None:
    data = fresh()
    ula = IPv6Network(data["mesh"]["ula"])
    data["anycast"]["apiserver"] = str(plan.loopback_subnet(ula).network_address + 5)
    data["anycast"]["dns"] = data["anycast"]["etcd"]
    found = problems(data)
    assert any(p.startswith("anycast.apiserver:") and "anycast subnet" in p for p in found)
    assert any(p.startswith("anycast.dns:") and "also anycast.etcd" in p for p in found)


def test_all_problems_reported_at_once() -> None:
    data = fresh()
    data["mesh"]["ula"] = "fd00::/64"
    data["pods"]["range"] = "x"
    assert len(problems(data)) == 2


def test_wrong_secret_is_not_echoed() -> None:
    data = fresh()
    data["secrets"]["ospf_key"] = "bad key with spaces!"
    assert not any("bad key" in p for p in problems(data))
    for key in ("boot_key", "cluster_ca_key", "service_account_key"):
        data = fresh()
        data["secrets"][key] = data["secrets"][key].replace("M", "x", 3)
        found = problems(data)
        assert any(p.startswith(f"secrets.{key}:") for p in found)
        assert not any("BEGIN" in p or "xx" in p for p in found)
    data = fresh()
    data["control_plane"]["ca_certificate"] = new_cluster_ca("another")[1]
    assert problems(data) == [
        "control_plane.ca_certificate: not the certificate of secrets.cluster_ca_key"]


def test_load_site_reports_toml_errors(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text("version = 1\nname = \n")
    with pytest.raises(SiteError, match="not valid TOML"):
        load_site(p)
    with pytest.raises(SiteError, match="cannot read"):
        load_site(tmp_path / "absent.toml")


def kubermesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubermesh", *args],
                          capture_output=True, text=True, check=False)


def test_cli_init_and_check(tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    r = kubermesh("site", "init", str(p), "--name", "dc1")
    assert r.returncode == 0, r.stderr
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert load_site(p).name == "dc1"
    assert kubermesh("site", "check", str(p)).returncode == 0
    before = p.read_text()
    r = kubermesh("site", "init", str(p))
    assert r.returncode == 1 and "exists already" in r.stderr
    assert p.read_text() == before  # nothing changed
    # The boot certificate, for enrolling in firmware: PEM to stdout, DER to a file,
    # both the certificate of the site's boot key, and never the key itself.
    r = kubermesh("site", "boot-cert", str(p))
    assert r.returncode == 0 and r.stdout == load_site(p).boot.certificate
    assert "PRIVATE" not in r.stdout
    der = tmp_path / "boot.der"
    assert kubermesh("site", "boot-cert", str(p), "--der", str(der)).returncode == 0
    cert = x509.load_der_x509_certificate(der.read_bytes())
    key = serialization.load_pem_private_key(load_site(p).secrets.boot_key.encode(), None)
    assert cert.public_key() == key.public_key()
    assert "dc1" in cert.subject.rfc4514_string()


def test_cli_check_names_field(tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    p.write_text(new_site_toml().replace('range = "10.96.0.0/12"', 'range = "10.244.0.0/16"'))
    p.chmod(0o644)
    r = kubermesh("site", "check", str(p))
    assert r.returncode == 1 and "open to other users (mode 0644)" in r.stderr  # its secrets
    p.chmod(0o600)
    r = kubermesh("site", "check", str(p))
    assert r.returncode == 1
    assert "services.range" in r.stderr and "overlaps pods.range" in r.stderr


def test_cli_init_refuses_bad_ranges(tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    r = kubermesh("site", "init", str(p), "--pod-range", "10.0.0.0/8",
                  "--service-range", "10.96.0.0/12")
    assert r.returncode == 1 and "services.range" in r.stderr
    assert not p.exists()


def test_default_ranges() -> None:
    s = parse_site(fresh())
    assert s.pods.range == IPv4Network("10.244.0.0/14")
    assert s.services.range == IPv4Network("10.96.0.0/12")
