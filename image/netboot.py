"""Netboot: one UKI that carries the root with it, for UEFI HTTP boot or iPXE.

The squashfs and its verity hashes ride in the initrd (a second cpio archive
appended to it), so a diskless node fetches one file and needs no network code
in its initrd; the root hash in the UKI's command line still pins every block,
so a neighbour cannot hand it a tampered root. The cost is RAM: the root stays
in memory (about the squashfs' size), which a node with a disk does not pay.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from firstboot import netboot
from image import uki
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


def newc_entries(data: bytes, start: int = 0) -> dict[str, tuple[int, int]]:
    """name -> (offset of its data, size) of each file of a newc cpio in data[start:]."""
    entries: dict[str, tuple[int, int]] = {}
    at = start
    while data[at:at + 6] == b"070701":
        size = int(data[at + 54:at + 62], 16)
        namesize = int(data[at + 94:at + 102], 16)
        name = data[at + 110:at + 110 + namesize - 1].decode()
        body = at + 110 + namesize
        body += -body % 4
        if name == "TRAILER!!!":
            break
        entries[name] = (body, size)
        at = body + size
        at += -at % 4
    return entries


def _find(haystack: Path, needle: bytes) -> int:
    """Where needle starts in the file haystack (-1 if nowhere)."""
    return haystack.read_bytes().find(needle)


def make_recipe(log: Log, signed: Path, initrd: Path, netboot_initrd: Path, disk_uki: Path,
                esp_image: Path, root: VerityRoot) -> netboot.Recipe:
    """The recipe of the signed netboot UKI: its kernel and initrd from the ESP's UKI,
    its root and verity from their partitions, the rest (headers, command line,
    cpio headers, signature: a few KiB) inline. Checked by assembling it."""
    nb = uki.sections(log, signed)
    initrd_off = nb[".initrd"].offset
    layout = newc_entries(netboot_initrd.read_bytes(), initrd.stat().st_size
                          + len(cpio_padding(initrd.stat().st_size)))
    regions: list[tuple[int, netboot.Segment]] = []
    for name, kind, src in ((DATA, "root", root.squashfs), (HASH, "verity", root.verity)):
        offset, size = layout[name.lstrip("/")]
        if size != src.stat().st_size:
            raise BuildError(f"the netboot initrd's {name} is not {src.name}")
        regions.append((initrd_off + offset, netboot.Segment(kind, 0, size)))
    # The kernel and the initrd, where the ESP holds them inside the disk's UKI.
    on_esp = uki.sections(log, disk_uki)
    base = _find(esp_image, disk_uki.read_bytes()[:1 << 16])
    if base >= 0:
        for section, length in ((".linux", nb[".linux"].size),
                                (".initrd", initrd.stat().st_size)):
            regions.append((nb[section].offset,
                            netboot.Segment("esp", base + on_esp[section].offset, length)))
    else:
        log.write("the UKI is not contiguous on the ESP: the recipe holds the kernel and initrd")
    segments: list[netboot.Segment] = []
    literal = bytearray()
    data = signed.read_bytes()
    at = 0
    for offset, seg in sorted(regions, key=lambda r: r[0]):
        if offset > at:
            segments.append(netboot.Segment("literal", len(literal), offset - at))
            literal += data[at:offset]
        segments.append(seg)
        at = offset + seg.length
    if at < len(data):
        segments.append(netboot.Segment("literal", len(literal), len(data) - at))
        literal += data[at:]
    recipe = netboot.Recipe(len(data), hashlib.sha256(data).hexdigest(), tuple(segments),
                            bytes(literal))
    sources = {"esp": esp_image, "root": root.squashfs, "verity": root.verity}
    if netboot.assemble(recipe, sources, lambda _: None) != recipe.sha256:
        raise BuildError("the netboot recipe does not rebuild the netboot UKI",
                         hint="a bug: the build log has the sections it used")
    return recipe
