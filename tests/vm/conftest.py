"""VM fixtures: the built image booted in QEMU, cabled as a mesh.

The guests, all booted from private copies of the same image:
- a, b, c: a line a-b-c, started together; `a` also carries the image checks;
- d: cabled to c, powered on later, while the others run (that cable plugged then);
- twin: a's hardware identity (SMBIOS UUID, and a's MAC on its NIC), cabled to d
  with the cable unplugged until the conflict test;
- corrupted: no cables; one byte of a file's data flipped inside its root partition;
- netboot: diskless, cabled to a (unplugged until its test); it netboots from a;
- wave: diskless, cabled to netboot (unplugged until its test); it netboots from
  netboot, the next wave;
- refused: diskless, cabled to corrupted, which serves it a tampered image.
The diskless ones have Secure Boot on, with the site's boot certificate enrolled.
Slow TCG boots overlap: a, b, c and corrupted at once, later d and twin with b's reboot.

The image comes from $KUBERMESH_IMAGE (an output directory) or out/; a missing
image fails the tests (never skips them): build it with ./dev.sh build.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra  # type: ignore[import-untyped]

from tests.vm import corrupt
from tests.vm.mesh import Cable, Mesh
from tests.vm.qemu import VM

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Image:
    dir: Path
    raw: Path
    manifest: dict[str, Any]


@dataclass
class Guests:
    mesh: Mesh
    a: VM
    b: VM
    c: VM
    d: VM
    twin: VM
    c_d: Cable
    d_twin: Cable
    corrupted: VM
    corrupted_file: str  # absolute path inside the guest
    corrupted_offset: int  # byte flipped, from the start of the disk
    netboot: VM
    a_netboot: Cable
    wave: VM
    netboot_wave: Cable
    refused: VM
    corrupted_refused: Cable


@pytest.fixture(scope="session")
def image() -> Image:
    d = Path(os.environ.get("KUBERMESH_IMAGE", ROOT / "out"))
    raw, man = d / "kubermesh.raw", d / "manifest.json"
    if not raw.is_file() or not man.is_file():
        pytest.fail(f"no built image in {d} (kubermesh.raw, manifest.json): "
                    "run ./dev.sh build first, or set KUBERMESH_IMAGE")
    return Image(d, raw, json.loads(man.read_text()))


def _victim(image: Image) -> str:
    """A big file the guest never reads while booting: a 100 GbE NIC driver."""
    return (f"usr/lib/modules/{image.manifest['kernel']}/kernel/drivers/net/ethernet/intel/"
            "ice/ice.ko")


_MESHES: list[Mesh] = []  # the session's guests, once made


def power_off_guests() -> None:
    """Power off every guest of `guests` (if it was made): tests that need the host's
    two cores for guests of their own. Their files stay until the session ends."""
    for mesh in _MESHES:
        for vm in mesh.vms.values():
            vm.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Kubernetes VM tests last: they power the other guests off."""
    items.sort(key=lambda item: getattr(getattr(item, "module", None), "__name__", "")
               == "tests.vm.test_kubernetes")


@pytest.fixture(scope="session")
def guests(image: Image, request: pytest.FixtureRequest) -> Iterator[Guests]:
    mesh = Mesh(image.raw)
    _MESHES.append(mesh)
    try:
        a, b, c, d = (mesh.vm(n) for n in "abcd")
        twin = mesh.vm("twin", twin_of="a")
        a_b = mesh.cable(a, b)
        mesh.cable(b, c)
        c_d = mesh.cable(c, d, plugged=False)
        d_twin = mesh.cable(twin, d, plugged=False, a_mac=a_b.a_nic.mac)
        corrupted = mesh.vm("corrupted")
        cert = image.manifest["site"]["boot_certificate"]
        netboot, wave, refused = (mesh.vm(n, diskless=True, secure_boot_cert=cert)
                                  for n in ("netboot", "wave", "refused"))
        a_netboot = mesh.cable(a, netboot, plugged=False, b_boots=True)
        netboot_wave = mesh.cable(netboot, wave, plugged=False, b_boots=True)
        corrupted_refused = mesh.cable(corrupted, refused, plugged=False, b_boots=True)
        mesh.start(a, b, c)
        # While they boot: find a byte of the victim file's data and flip it on the copy.
        victim_disk = corrupted.disk
        assert victim_disk is not None
        offset, size = corrupt.partition(victim_disk, corrupt.ROOT_TYPE)
        scratch = mesh.work / "root.squashfs"
        with victim_disk.open("rb") as src, scratch.open("wb") as dst:
            src.seek(offset)
            shutil.copyfileobj(_Limited(src, size), dst)
        victim = _victim(image)
        inside = corrupt.find_data_byte(scratch, victim)
        scratch.unlink()
        corrupt.flip_byte(victim_disk, offset + inside)
        corrupted.start()
        yield Guests(mesh, a, b, c, d, twin, c_d, d_twin, corrupted, "/" + victim,
                     offset + inside, netboot, a_netboot, wave, netboot_wave, refused,
                     corrupted_refused)
    finally:
        # A failed test leaves the guests' consoles behind, and says where.
        kept = mesh.close(keep_logs=request.session.testsfailed > 0)
        if kept is not None:
            print(f"\nVM consoles kept in {kept}")


class _Limited:
    """A file object reading at most n bytes (copying one partition out of a disk)."""

    def __init__(self, f: Any, n: int) -> None:
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data: bytes = self.f.read(size)
        self.left -= len(data)
        return data


@pytest.fixture(scope="session")
def main(guests: Guests) -> VM:
    """The guest the image checks run on: a, once booted."""
    state = guests.a.wait_booted()
    assert state in ("running", "degraded"), f"systemd state {state!r}"
    return guests.a


@pytest.fixture(scope="session")
def host(main: VM) -> Any:
    return testinfra.get_host(f"ssh://{main.name}", ssh_config=str(main.ssh_config), timeout=120)
