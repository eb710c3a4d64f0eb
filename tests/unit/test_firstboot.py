"""The node's edges: what sysfs says it is and which NICs it has, its one status
file (stages, round trip, rendering, staleness)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from firstboot import hardware
from firstboot.status import (
    STALE_AFTER,
    AnycastStatus,
    ControllerReport,
    LinkStatus,
    NodeStatus,
    OverlayStatus,
    Stage,
    read,
    render,
    stage_of,
    write,
)
from mesh.plan import HardwareIdentity
from tests.unit.fakes import fake_nic


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    fake_nic(tmp_path, "lo", "00:00:00:00:00:00", physical=False)
    fake_nic(tmp_path, "enp1s0", "52:54:00:00:00:22", speed=10000)
    fake_nic(tmp_path, "enp2s0", "52:54:00:00:00:11", carrier=False, speed=-1)
    fake_nic(tmp_path, "mgmt0", "52:54:00:00:00:01")
    fake_nic(tmp_path, "veth0", "0a:00:00:00:00:01", physical=False, perm=False)
    fake_nic(tmp_path, "usb0", "02:00:00:00:00:99", perm=False)  # random MAC: not identity
    return tmp_path


def test_identity_from_dmi_else_lowest_permanent_physical_mac(sysfs: Path) -> None:
    assert hardware.identity(sysfs) == HardwareIdentity("mac", "52:54:00:00:00:01")
    dmi = sysfs / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text("03000200-0400-0500-0006-000700080009\n")  # bogus
    assert hardware.identity(sysfs).kind == "mac"
    (dmi / "product_uuid").write_text("9A3F0E1C-1111-4C2B-8D3E-0123456789AB\n")
    assert hardware.identity(sysfs) == HardwareIdentity("dmi",
                                                        "9a3f0e1c-1111-4c2b-8d3e-0123456789ab")


def test_no_identity_without_dmi_or_a_permanent_mac(tmp_path: Path) -> None:
    fake_nic(tmp_path, "usb0", "02:00:00:00:00:99", perm=False)
    with pytest.raises(ValueError, match="no hardware identity"):
        hardware.identity(tmp_path)


def test_mesh_links_are_physical_nics_minus_not_mesh(sysfs: Path) -> None:
    nics = hardware.nics(sysfs)
    assert [n.name for n in nics] == ["enp1s0", "enp2s0", "mgmt0", "usb0", "veth0"]
    assert hardware.mesh_links(nics, []) == ["enp1s0", "enp2s0", "mgmt0", "usb0"]
    assert hardware.mesh_links(nics, ["mgmt*"]) == ["enp1s0", "enp2s0", "usb0"]
    assert hardware.mesh_links(nics, ["52:54:00:00:00:1?"]) == ["enp1s0", "mgmt0", "usb0"]
    assert hardware.mesh_links(nics, ["52:54:00:00:00:1?".upper()]) == [
        "enp1s0", "mgmt0", "usb0"]  # a MAC glob in either case
    assert "veth0" in hardware.mesh_links(nics, [], physical_only=False)


def test_carrier_and_speed(sysfs: Path) -> None:
    assert hardware.carrier(sysfs, "enp1s0") and not hardware.carrier(sysfs, "enp2s0")
    assert hardware.speed(sysfs, "enp1s0") == 10000
    assert hardware.speed(sysfs, "mgmt0") is None  # no file
    assert not hardware.carrier(sysfs, "gone0")


def test_a_speed_of_minus_one_is_unknown(sysfs: Path) -> None:
    assert hardware.speed(sysfs, "enp2s0") is None


def link(name: str, carrier: bool = True, state: str = "") -> LinkStatus:
    return LinkStatus(name, carrier, "10.0.0.1" if state else "", state)


def test_stages() -> None:
    assert stage_of((), 0, 0) == Stage.BOOTING
    assert stage_of((link("a", carrier=False),), 0, 0) == Stage.BOOTING
    assert stage_of((link("a"),), 0, 0) == Stage.LINKS
    assert stage_of((link("a", state="ExStart"),), 0, 0) == Stage.LINKS
    assert stage_of((link("a", state="Full"),), 3, 2) == Stage.ADJACENCIES
    assert stage_of((link("a", state="Full"), link("b")), 3, 3) == Stage.ROUTES
    full = (link("a", state="Full"),)
    held = OverlayStatus("10.244.3.0/24", "10.244.3.1", blocks_known=3, blocks_routed=3)
    assert stage_of(full, 3, 3, OverlayStatus(blocks_known=3)) == Stage.ROUTES
    assert stage_of(full, 3, 3, replace(held, blocks_routed=2)) == Stage.ROUTES
    assert stage_of(full, 3, 3, held, "unreachable") == Stage.OVERLAY
    assert stage_of(full, 3, 3, held, "routed") == Stage.ANYCAST
    assert stage_of(full, 3, 3, held, "local", "activating") == Stage.ANYCAST
    assert stage_of(full, 3, 3, held, "routed", "active") == Stage.KUBELET
    # A stage is never reached past a missing earlier one.
    assert stage_of(full, 3, 2, held, "routed", "active") == Stage.ADJACENCIES


def status(**kw: object) -> NodeStatus:
    base = NodeStatus("ab" * 8, "km-abababababab", "mac:52:54:00:00:00:01", "fd00::1",
                      "10.1.2.3", Stage.ADJACENCIES)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_status_round_trip_and_render(tmp_path: Path) -> None:
    st = status(links=(link("enp1s0", state="Full"), link("enp2s0", carrier=False)),
                known_nodes=3, routes_to=2, known=("10.0.0.7", "10.0.0.8", "10.0.0.9"),
                routed=("fd00::7", "fd00::8"), conflicts=("another node uses router-id x",),
                errors=("overlay: 1 failed: route 10.244.1.0/24",),
                overlay=OverlayStatus("10.244.3.0/24", "10.244.3.1", 3, 2),
                anycast=(AnycastStatus("apiserver", "fd00:0:0:1::1", "unreachable"),),
                kubelet="activating", updated=1000.0,
                controllers=(ControllerReport("links", "ok", "", 990.0),
                             ControllerReport("overlay", "error", "1 failed", 995.5),
                             ControllerReport("kubelet", "pending")),
                forged_claims=("fd00:0:0:2:af4:300:a00:1",))
    write(st, tmp_path / "s.json")
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o644
    assert read(tmp_path / "s.json") == st
    assert NodeStatus.from_json(st.to_json()) == st
    text = render(st, now=1003.0)
    assert "status    written 3 s ago" in text
    assert "stage     adjacencies" in text and "routes    to 2 of 3" in text
    assert "enp2s0" in text and "no carrier" in text
    assert "neighbour 10.0.0.1 Full" in text
    assert "CONFLICT  another node uses router-id x" in text
    assert "overlay   block 10.244.3.0/24 (node 10.244.3.1); 2 of 3 other blocks routed" in text
    assert "anycast   apiserver  fd00:0:0:1::1 unreachable" in text
    assert "kubelet   activating" in text
    assert "forged    pod-block claim fd00:0:0:2:af4:300:a00:1 (ignored)" in text
    assert "error     overlay: 1 failed: route 10.244.1.0/24" in text


def test_a_status_from_an_older_runtime_still_reads() -> None:
    old = status().to_json()
    for key in ("controllers", "forged_claims", "updated", "overlay", "anycast", "known"):
        del old[key]
    st = NodeStatus.from_json(old)
    assert st.controllers == () and st.forged_claims == () and st.updated == 0.0
    assert st.stale()  # written by nobody knows when


def test_a_status_nobody_rewrites_is_stale() -> None:
    st = status(updated=1000.0)
    assert not st.stale(now=1000.0 + STALE_AFTER - 1)
    assert st.stale(now=1000.0 + STALE_AFTER + 1)
    assert st.age(now=1010.0) == 10.0
    assert render(st, now=1002.0).startswith("status    written 2 s ago\n")
    old = render(st, now=1100.0)
    assert old.startswith("status    STALE: written 100 s ago; is the runtime running?")
    assert "systemctl status kubermesh-agent" in old
    # A clock that stepped back does not say "-3 s ago".
    assert render(st, now=997.0).startswith("status    written 0 s ago")


def test_status_without_links_or_block() -> None:
    text = render(status(updated=1.0), now=1.0)
    assert "(no mesh links)" in text
    assert "overlay   no pod block yet; 0 other blocks known" in text
    assert "kubelet   not installed" in text
    assert "CONFLICT" not in text and "error" not in text and "forged" not in text


def test_status_names_unreachable_routers(tmp_path: Path) -> None:
    st = status(stage=Stage.ROUTES, links=(link("enp1s0", state="Full"),), known_nodes=1,
                routes_to=1, unreachable=("10.9.9.9",))
    write(st, tmp_path / "s.json")
    assert read(tmp_path / "s.json") == st
    assert "routes    to 1 of 1 other nodes; 1 more unreachable (10.9.9.9)" in render(st)
