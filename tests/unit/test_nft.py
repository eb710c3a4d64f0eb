"""The packet filter: its rules for a few specs, and nft's own parser and kernel
accepting them in a private network namespace."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.nft import TABLE, FilterSpec, render_nftables

SPECS = {
    "full subset": FilterSpec(("m3", "m2", "m4"), ("m2",)),
    "no full adjacency": FilterSpec(("m2", "m3"), ()),
    "no mesh links": FilterSpec((), (), mesh_tcp_ports=()),
    "serving a newcomer": FilterSpec(("m2", "m3"), ("m2",), ("m3",)),
}


def stanzas(script: str) -> dict[str, list[str]]:
    """`set NAME` / `chain NAME` inside the table -> its lines, comments left out."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    body = script.split(f"table inet {TABLE} {{\n", 1)[1]
    for raw in body.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("set ", "chain ")):
            current = out.setdefault(line.removesuffix(" {"), [])
        elif line == "}":
            current = None
        elif current is not None:
            current.append(line)
    return out


def test_the_script_replaces_only_its_own_table() -> None:
    lines = [x for x in render_nftables(SPECS["full subset"]).splitlines()
             if x and not x.startswith("#")]
    assert lines[:3] == ["table inet kubermesh", "delete table inet kubermesh",
                         "table inet kubermesh {"]
    assert sum(x.startswith("table ") for x in lines) == 2


def test_forwarding_only_from_full_links_and_the_pod_bridge() -> None:
    s = stanzas(render_nftables(SPECS["full subset"]))
    assert s["set mesh_links"] == ["type ifname", 'elements = { "m2", "m3", "m4" }']
    assert s["set full_links"] == ["type ifname", 'elements = { "m2" }']
    assert s["set mesh_tcp_ports"] == ["type inet_service",
                                       "elements = { 22, 2379, 2380, 4780, 6443, 10250 }"]
    assert s["chain forward"] == [
        "type filter hook forward priority filter; policy drop;",
        "iifname @full_links oifname @mesh_links accept",
        'iifname @full_links oifname "cni0" accept',
        'iifname "cni0" oifname @mesh_links accept',
        'iifname "cni0" oifname "cni0" accept',
        "counter drop",
    ]
    assert not any("ct " in rule for rule in s["chain forward"])  # stateless: ECMP


def test_input_judges_only_mesh_links_and_lets_adjacencies_form() -> None:
    s = stanzas(render_nftables(SPECS["full subset"]))
    assert s["chain input"] == ["type filter hook input priority filter; policy accept;",
                                "iifname @mesh_links jump mesh_input"]
    rules = s["chain mesh_input"]
    members_only = rules.index("iifname != @full_links counter drop")
    before, after = " ".join(rules[:members_only]), rules[members_only + 1:]
    assert "meta l4proto 89 accept" in before  # OSPFv3
    assert "udp dport { 3784, 3785, 4784 } accept" in before  # BFD
    for icmp in ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit",
                 "nd-router-advert", "mld-listener-query", "mld-listener-report",
                 "mld2-listener-report"):
        assert icmp in before
    assert after == ["ct state established,related accept",
                     "meta l4proto { icmp, ipv6-icmp } accept",
                     "tcp dport @mesh_tcp_ports accept",
                     "counter drop"]
    # A newcomer on a served link reaches DHCPv6 and the provisioning server only.
    assert rules[members_only - 2:members_only] == [
        "iifname @serving_links udp dport 547 accept",
        "iifname @serving_links tcp dport 4780 accept"]
    s = stanzas(render_nftables(SPECS["serving a newcomer"]))
    assert s["set serving_links"] == ["type ifname", 'elements = { "m3" }']


def test_empty_sets_have_no_elements_line() -> None:
    s = stanzas(render_nftables(SPECS["no mesh links"]))
    assert s["set mesh_links"] == s["set full_links"] == ["type ifname"]
    assert s["set mesh_tcp_ports"] == ["type inet_service"]
    s = stanzas(render_nftables(SPECS["no full adjacency"]))
    assert s["set full_links"] == ["type ifname"]


def test_the_pod_bridge_and_ports_are_the_specs() -> None:
    s = stanzas(render_nftables(FilterSpec(("m2",), ("m2",), pod_bridge="pods0",
                                           mesh_tcp_ports=(6443, 22, 6443))))
    assert 'iifname "pods0" oifname "pods0" accept' in s["chain forward"]
    assert s["set mesh_tcp_ports"][1] == "elements = { 22, 6443 }"


@pytest.mark.parametrize("spec, bad", [
    (FilterSpec(("m2", "eth0; drop"), ()), "'eth0; drop'"),
    (FilterSpec(("m2",), ('m2"',)), "'m2\"'"),
    (FilterSpec(("a-very-long-interface",), ()), "'a-very-long-interface'"),
    (FilterSpec(("lo",), ()), "'lo'"),
    (FilterSpec(("m2",), (), pod_bridge="cni 0"), "'cni 0'"),
    (FilterSpec(("m2",), ("m3",)), "m3"),
    (FilterSpec(("m2",), (), ("m4",)), "served links that are not mesh links: m4"),
    (FilterSpec(("m2", "cni0"), ()), "'cni0'"),
    (FilterSpec(("m2",), (), mesh_tcp_ports=(0,)), "0"),
    (FilterSpec(("m2",), (), mesh_tcp_ports=(65536,)), "65536"),
])
def test_bad_names_and_ports_are_refused_by_name(spec: FilterSpec, bad: str) -> None:
    with pytest.raises(ValueError) as e:
        render_nftables(spec)
    assert bad in str(e.value)


# --- nft itself, in a private network namespace


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"needs the `{name}` binary (Debian package {package})")
    return path


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace kmt-render-<random>, removed afterwards."""
    ip = _tool("ip", "iproute2")
    _tool("nft", "nftables")
    name = f"kmt-render-{secrets.token_hex(4)}"
    r = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True,
                       check=False, timeout=30)
    if r.returncode:
        pytest.skip(f"cannot create a network namespace (needs root): {r.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False, timeout=30)


def nft(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True,
                          text=True, check=False, timeout=30)


@pytest.mark.parametrize("case", SPECS)
def test_nft_accepts_the_script(case: str, netns: str, tmp_path: Path) -> None:
    script = tmp_path / "kubermesh.nft"
    script.write_text(render_nftables(SPECS[case]))
    r = nft(netns, "-c", "-f", str(script))
    assert r.returncode == 0, r.stderr


def test_applying_twice_replaces_only_its_own_table(netns: str, tmp_path: Path) -> None:
    other = tmp_path / "other.nft"
    other.write_text("table inet other {\n\tchain input {\n"
                     "\t\ttype filter hook input priority 10; policy accept;\n"
                     "\t\ttcp dport 9 counter drop\n\t}\n}\n")
    assert nft(netns, "-f", str(other)).returncode == 0
    script = tmp_path / "kubermesh.nft"
    for full in (("m2",), ("m3", "m4")):  # the first run creates the table, the second swaps it
        script.write_text(render_nftables(FilterSpec(("m2", "m3", "m4"), full)))
        r = nft(netns, "-f", str(script))
        assert r.returncode == 0, r.stderr
    tables = nft(netns, "list", "tables").stdout.split("\n")
    assert sorted(t for t in tables if t) == ["table inet kubermesh", "table inet other"]
    full_set = nft(netns, "list", "set", "inet", TABLE, "full_links").stdout
    assert '"m3"' in full_set and '"m4"' in full_set and '"m2"' not in full_set
    assert nft(netns, "list", "chain", "inet", TABLE, "forward").stdout.count("accept") == 4
    assert "tcp dport 9 counter" in nft(netns, "list", "table", "inet", "other").stdout


def test_nothing_reaches_a_cloud_metadata_service(netns: str, tmp_path: Path) -> None:
    """Even where 169.254.169.254 answers (here: on lo), the node's own packets to it
    are dropped and counted; its neighbour address still answers."""
    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True,
                              text=True, check=False, timeout=30)

    for cmd in (("ip", "link", "set", "lo", "up"),
                ("ip", "addr", "add", "169.254.169.254/32", "dev", "lo"),
                ("ip", "addr", "add", "169.254.169.253/32", "dev", "lo")):
        assert run(*cmd).returncode == 0
    assert run("ping", "-c", "1", "-W", "2", "169.254.169.254").returncode == 0
    script = tmp_path / "kubermesh.nft"
    script.write_text(render_nftables(SPECS["full subset"]))
    assert nft(netns, "-f", str(script)).returncode == 0
    assert run("ping", "-c", "1", "-W", "2", "169.254.169.254").returncode != 0
    assert run("ping", "-c", "1", "-W", "2", "169.254.169.253").returncode == 0
    out = nft(netns, "list", "chain", "inet", TABLE, "output").stdout
    assert "ip daddr 169.254.169.254 counter packets 1 " in out, out
