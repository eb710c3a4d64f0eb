"""VM fixtures: the built image booted in QEMU, two guests in parallel.

- `main`: a copy of kubermesh.raw with free space for /var; most checks, then a reboot.
- `corrupted`: a copy with one byte of a file's data flipped inside the root partition.

Both start as soon as the session needs either, so their slow TCG boots overlap.
The image comes from $KUBERMESH_IMAGE (an output directory) or out/; a missing
image fails the tests (never skips them): build it with ./dev.sh build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra  # type: ignore[import-untyped]

from tests.vm import corrupt
from tests.vm.qemu import VM, kvm_works

ROOT = Path(__file__).resolve().parents[2]
DISK_SIZE = 4 << 30  # the stick the image is written to: room for /var


@dataclass(frozen=True)
class Image:
    dir: Path
    raw: Path
    manifest: dict[str, Any]


@dataclass
class Guests:
    main: VM
    corrupted: VM
    corrupted_file: str  # absolute path inside the guest
    corrupted_offset: int  # byte flipped, from the start of the disk


@pytest.fixture(scope="session")
def image() -> Image:
    d = Path(os.environ.get("KUBERMESH_IMAGE", ROOT / "out"))
    raw, man = d / "kubermesh.raw", d / "manifest.json"
    if not raw.is_file() or not man.is_file():
        pytest.fail(f"no built image in {d} (kubermesh.raw, manifest.json): "
                    "run ./dev.sh build first, or set KUBERMESH_IMAGE")
    return Image(d, raw, json.loads(man.read_text()))


def _disk_copy(raw: Path, dest: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(raw), str(dest)], check=True)
    os.truncate(dest, max(DISK_SIZE, dest.stat().st_size))
    return dest


def _victim(image: Image) -> str:
    """A big file the guest never reads while booting: a GPU driver a VM does not load."""
    return f"usr/lib/modules/{image.manifest['kernel']}/kernel/drivers/gpu/drm/amd/amdgpu/amdgpu.ko"


@pytest.fixture(scope="session")
def guests(image: Image) -> Iterator[Guests]:
    # A directory of our own: pytest prunes old basetemps, also of other sessions.
    work = Path(tempfile.mkdtemp(prefix="kubermesh-vm-", dir="/var/tmp"))
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kubermesh-vm-test",
                    "-f", str(key)], check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    accel = "kvm" if kvm_works() else "tcg"
    main = VM("main", _disk_copy(image.raw, work / "main.raw"), work, pub, key, accel=accel)
    corrupted = VM("corrupted", _disk_copy(image.raw, work / "corrupted.raw"), work, pub, key,
                   accel=accel)
    vms = [main, corrupted]
    try:
        main.start()
        # While main boots: find a byte of the victim file's data and flip it on the copy.
        offset, size = corrupt.partition(corrupted.disk, corrupt.ROOT_TYPE)
        scratch = work / "root.squashfs"
        with corrupted.disk.open("rb") as src, scratch.open("wb") as dst:
            src.seek(offset)
            shutil.copyfileobj(_Limited(src, size), dst)
        victim = _victim(image)
        inside = corrupt.find_data_byte(scratch, victim)
        scratch.unlink()
        corrupt.flip_byte(corrupted.disk, offset + inside)
        corrupted.start()
        yield Guests(main, corrupted, "/" + victim, offset + inside)
    finally:
        for vm in vms:
            vm.stop()
        if os.environ.get("KUBERMESH_KEEP_VM_DIR"):
            print(f"VM files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


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
    state = guests.main.wait_booted()
    assert state in ("running", "degraded"), f"systemd state {state!r}"
    return guests.main


@pytest.fixture(scope="session")
def host(main: VM) -> Any:
    return testinfra.get_host(f"ssh://{main.name}", ssh_config=str(main.ssh_config), timeout=120)
