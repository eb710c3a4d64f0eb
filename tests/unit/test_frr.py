"""The FRR renderer, checked line by line and by FRR's own parser."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from mesh import plan
from mesh.frr import link_cost, render_frr_conf
from mesh.plan import HardwareIdentity
from mesh.site import Site, new_site_toml, parse_site


@pytest.fixture
def site() -> Site:
    return parse_site(tomllib.loads(new_site_toml("t")))


def blocks(conf: str) -> dict[str, list[str]]:
    """Top-level stanza -> its indented lines."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in conf.splitlines():
        if not line or line.lstrip().startswith("!"):
            continue
        if line.startswith(" "):
            out[current].append(line.strip())
        elif line != "exit":
            current = line
            out.setdefault(current, [])
    return out


def test_render(site: Site) -> None:
    node = plan.derive(HardwareIdentity("mac", "52:54:00:00:00:01"), site.mesh.ula)
    conf = render_frr_conf(site, node, ["eth1", "eth0", "eth1"])
    b = blocks(conf)
    assert f"hostname {node.hostname}" in b
    assert b["interface lo"] == ["ipv6 ospf6 area 0", "ipv6 ospf6 passive"]
    m = site.mesh  # the site's SPF throttle (default: at once, backing off under churn)
    assert (f"timers throttle spf {m.spf_delay_ms} {m.spf_hold_ms} {m.spf_max_hold_ms}"
            in b["router ospf6"]) and (m.spf_delay_ms, m.spf_hold_ms) == (0, 50)
    for link in ("eth0", "eth1"):
        lines = b[f"interface {link}"]
        assert "ipv6 ospf6 area 0" in lines
        assert "ipv6 ospf6 network point-to-point" in lines
        assert f"ipv6 ospf6 hello-interval {site.mesh.hello_interval}" in lines
        assert f"ipv6 ospf6 dead-interval {site.mesh.dead_interval}" in lines
        assert "ipv6 ospf6 bfd profile mesh" in lines
        assert (f"ipv6 ospf6 authentication key-id {site.secrets.ospf_key_id} "
                f"hash-algo hmac-sha-256 key {site.secrets.ospf_key}") in lines
        assert "ipv6 ospf6 passive" not in lines
        # No provisioning /64 (netboot serving) is ever announced from a link.
        assert "ipv6 ospf6 advertise prefix-list kubermesh-link-prefixes" in lines
    provisioning = plan.provisioning_range(site.mesh.ula)
    assert (f"ipv6 prefix-list kubermesh-link-prefixes seq 5 deny {provisioning} le 128"
            in b)
    assert plan.provisioning_prefix(site.mesh.ula, node.node_id, "eth0").subnet_of(provisioning)
    assert conf.count("interface eth1") == 1
    assert f"ospf6 router-id {node.router_id}" in b["router ospf6"]
    assert b["bfd"][1:] == ["detect-multiplier 3", "receive-interval 100",
                            "transmit-interval 100", "exit"]


def test_link_cost_from_speed(site: Site) -> None:
    assert [link_cost(s) for s in (100_000, 10_000, 1000, 100, 1)] == [1, 10, 100, 1000, 65535]
    assert link_cost(None) == link_cost(-1) == link_cost(0) == 100  # unknown: as 1 Gb/s
    node = plan.derive(HardwareIdentity("mac", "52:54:00:00:00:01"), site.mesh.ula)
    b = blocks(render_frr_conf(site, node, ["eth0", "eth1"], costs={"eth0": 10}))
    assert "ipv6 ospf6 cost 10" in b["interface eth0"]
    assert "ipv6 ospf6 cost 100" in b["interface eth1"]


def test_no_links_still_announces_loopback(site: Site) -> None:
    node = plan.derive(HardwareIdentity("mac", "52:54:00:00:00:01"), site.mesh.ula)
    conf = render_frr_conf(site, node, [])
    assert "interface lo" in conf and "point-to-point" not in conf


@pytest.mark.parametrize("bad", ["lo", "", "a" * 16, "eth0\nrouter bgp 1", "eth 0"])
def test_bad_interface_names_refused(site: Site, bad: str) -> None:
    node = plan.derive(HardwareIdentity("mac", "52:54:00:00:00:01"), site.mesh.ula)
    with pytest.raises(ValueError, match="not a valid mesh interface"):
        render_frr_conf(site, node, [bad])


def test_frr_accepts_it(site: Site, tmp_path: Path) -> None:
    """FRR 8.4's own parser (vtysh --dryrun) accepts every line."""
    node = plan.derive(HardwareIdentity("mac", "52:54:00:00:00:01"), site.mesh.ula)
    conf = tmp_path / "frr.conf"
    conf.write_text(render_frr_conf(site, node, ["eth0", "eth1"]))
    r = subprocess.run(["vtysh", "--dryrun", "--inputfile", str(conf)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Unknown command" not in r.stdout + r.stderr
