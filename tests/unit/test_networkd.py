"""NIC policy: the image's networkd defaults (every ethernet NIC a mesh link, CNI's
devices left alone) and the runtime's files for NICs marked not mesh."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from mesh import cni
from mesh.networkd import PREFIX, render_networkd

NETWORK = Path(__file__).resolve().parent.parent.parent / "units" / "network"
MESH_DEFAULT = "80-kubermesh-mesh.network"


def parse(text: str) -> configparser.RawConfigParser:
    p = configparser.RawConfigParser(strict=False)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(text)
    return p


def as_dict(text: str) -> dict[str, dict[str, str]]:
    return {s: dict(v) for s, v in parse(text).items() if s != "DEFAULT"}


def shipped() -> dict[str, dict[str, dict[str, str]]]:
    return {f.name: as_dict(f.read_text()) for f in sorted(NETWORK.glob("*.network"))}


def test_one_dhcp_file_per_not_mesh_nic() -> None:
    files = render_networkd(["mgmt0", "eno1", "mgmt0"])
    assert sorted(files) == ["40-kubermesh-not-mesh-eno1.network",
                             "40-kubermesh-not-mesh-mgmt0.network"]
    assert as_dict(files["40-kubermesh-not-mesh-mgmt0.network"]) == {
        "Match": {"Name": "mgmt0"},
        "Network": {"DHCP": "yes", "IPv6AcceptRA": "yes"},
    }
    assert render_networkd([]) == {}


@pytest.mark.parametrize("bad", ["eth*", "a b", "x" * 16, "", "lo", "m2\n[Network]"])
def test_bad_names_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        render_networkd(["eno1", bad])
    assert repr(bad) in str(e.value)


def test_every_ethernet_nic_is_a_mesh_link_by_default() -> None:
    files = shipped()
    assert files[MESH_DEFAULT] == {
        "Match": {"Type": "ether"},
        "Link": {"RequiredForOnline": "no"},
        "Network": {"LinkLocalAddressing": "ipv6", "IPv6AcceptRA": "no", "DHCP": "no",
                    "LLDP": "yes", "EmitLLDP": "nearest-bridge"},
    }
    # No shipped file hands out DHCP: only the runtime's, for NICs marked not mesh.
    assert [n for n, f in files.items() if f.get("Network", {}).get("DHCP", "no") != "no"] == []


def test_cnis_devices_are_unmanaged_and_sort_before_the_mesh_default() -> None:
    files = shipped()
    unmanaged = {n: f["Match"] for n, f in files.items()
                 if f.get("Link", {}).get("Unmanaged") == "yes"}
    assert sorted(unmanaged.values(), key=str) == [{"Kind": "veth"}, {"Name": cni.BRIDGE}]
    for name in unmanaged:
        assert name < MESH_DEFAULT
    # networkd takes the first file (across its directories) in lexical order.
    assert f"{PREFIX}not-mesh-eno1.network" < MESH_DEFAULT
    assert sorted(files)[-1] == MESH_DEFAULT
