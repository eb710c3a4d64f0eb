"""Provisioning of neighbours: dnsmasq's configuration, checked line by line and by
dnsmasq's own parser; its lease file read back."""

from __future__ import annotations

import subprocess
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from mesh import plan
from mesh.provision import HTTP_PORT, ServedLink, parse_leases, render_dnsmasq

ULA = IPv6Network("fd12:3456:789a::/48")


def links(*names: str) -> list[ServedLink]:
    return [ServedLink(n, plan.provisioning_prefix(ULA, "00112233aabbccdd", n)) for n in names]


def test_each_link_gets_ra_dhcpv6_and_its_own_boot_url(tmp_path: Path) -> None:
    served = links("enp1s0", "enp2s0")
    conf = render_dnsmasq(served, tmp_path)
    lines = conf.splitlines()
    assert "port=0" in lines and "enable-ra" in lines  # no DNS; RAs
    assert f"dhcp-leasefile={tmp_path}/dnsmasq.leases" in lines
    for i, link in enumerate(served, 1):
        p = link.prefix.network_address
        assert f"interface={link.name}" in lines
        assert f"ra-param={link.name},10,0" in lines  # router lifetime 0: not a gateway
        assert f"dhcp-range=set:l{i},{p + 256},{p + 511},64,10m" in lines
        url = f"http://[{p + 1}]:{HTTP_PORT}/kubermesh.efi"
        assert link.boot_url == url
        assert f"dhcp-option=tag:httpboot,tag:l{i},option6:bootfile-url,{url}" in lines
    assert "dhcp-option=tag:httpboot,option6:16,xxxxHTTPClient" in lines


def test_dnsmasq_accepts_it(tmp_path: Path) -> None:
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(render_dnsmasq(links("enp1s0", "m2"), tmp_path))
    r = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and "syntax check OK" in r.stderr, r.stderr


def test_bad_or_repeated_links_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="served interface name"):
        render_dnsmasq(links("bad name"), tmp_path)
    with pytest.raises(ValueError, match="served twice"):
        render_dnsmasq(links("m1", "m1"), tmp_path)


def test_leases_are_read_back() -> None:
    text = ("duid 00:01:00:01:2c:aa:bb:cc:52:54:00:00:00:01\n"
            "1764000000 1234 fd12:3456:789a:8001::142 * 00:04:aa:bb:cc:dd\n"
            "1764000000 52:54:00:00:00:02 10.0.0.5 host 01:52:54:00:00:00:02\n")
    assert parse_leases(text) == [("00:04:aa:bb:cc:dd", IPv6Address("fd12:3456:789a:8001::142"))]
