"""Netboot: one UKI that carries the root with it, for UEFI HTTP boot or iPXE.

The squashfs and its verity hashes ride in the initrd (a second cpio archive
appended to it), so a diskless node fetches one file and needs no network code
in its initrd; the root hash in the UKI's command line still pins every block,
so a neighbour cannot hand it a tampered root. The cost is RAM: the root stays
in memory (about the squashfs' size), which a node with a disk does not pay.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from image.errors import BuildError
from image.root import VerityRoot
from image.run import Log
from image.uki import COMMON

# Where the root files sit in the netboot initrd, and the loop devices the
# initrd attaches them to (units/dracut/kubermesh-netroot.sh).
DATA, HASH = "/kubermesh/root.squashfs", "/kubermesh/root.verity"


def netboot_cmdline(root: VerityRoot) -> str:
    return " ".join((
        f"roothash={root.root_hash}", "kubermesh.netroot=1",
        "systemd.verity_root_data=/dev/loop0", "systemd.verity_root_hash=/dev/loop1",
        "root=/dev/mapper/root", "rootfstype=squashfs", "ro", *COMMON))


def cpio_padding(size: int) -> bytes:
    """NULs after an initrd of `size` bytes so that an archive appended to it starts on
    a 4-byte boundary: the kernel looks for the next cpio magic only there, and
    otherwise stops with "Initramfs unpacking failed: invalid magic"."""
    return b"\0" * (-size % 4)


def netboot_initrd(log: Log, work: Path, initrd: Path, root: VerityRoot, out: Path) -> Path:
    """The disk initrd, padded to 4 bytes, followed by an uncompressed cpio holding
    the root."""
    staging = work / "netroot"
    (staging / "kubermesh").mkdir(parents=True, exist_ok=True)
    for src, dst in ((root.squashfs, DATA), (root.verity, HASH)):
        target = staging / dst.lstrip("/")
        target.unlink(missing_ok=True)
        target.hardlink_to(src)
    log.write(f"$ cpio -o -H newc > {out}")
    names = "kubermesh\nkubermesh/root.squashfs\nkubermesh/root.verity\n"
    with out.open("wb") as f:
        head = initrd.read_bytes()
        f.write(head + cpio_padding(len(head)))
        f.flush()  # cpio writes to the same file descriptor after it
        try:
            proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                                  input=names.encode(), stdout=f, cwd=staging, check=False)
        except FileNotFoundError:
            raise BuildError("cpio is not installed",
                             hint="./dev.sh setup installs the build host's packages") from None
    if proc.returncode != 0:
        raise BuildError(f"cpio exited with status {proc.returncode}")
    return out
