"""Find one byte of a file's data inside a squashfs, and flip it on a disk image.

The byte is found by search, not by parsing: flipping a range of the squashfs'
data area (on a scratch copy) either changes what `unsquashfs -cat` reads for
the file or not, and halving the range that does converges on one byte.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from pathlib import Path

ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # root-x86-64
FLIP = bytes(b ^ 0xFF for b in range(256))
SQUASHFS_MAGIC = 0x73717368
COMPRESSOR_OPTIONS = 0x0400  # superblock flag


def partition(disk: Path, type_uuid: str) -> tuple[int, int]:
    """(offset, size) in bytes of the partition of that type."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    for p in table["partitions"]:
        if p["type"].upper() == type_uuid:
            return int(p["start"]) * sector, int(p["size"]) * sector
    raise LookupError(f"{disk} has no partition of type {type_uuid}")


def _flip(path: Path, lo: int, hi: int) -> None:
    with path.open("r+b") as f:
        f.seek(lo)
        data = f.read(hi - lo)
        f.seek(lo)
        f.write(data.translate(FLIP))


def _read(squashfs: Path, inner: str) -> str:
    r = subprocess.run(["unsquashfs", "-cat", str(squashfs), inner], capture_output=True,
                       check=False)
    return hashlib.sha256(r.stdout).hexdigest() if r.returncode == 0 else f"error {r.returncode}"


def find_data_byte(squashfs: Path, inner: str) -> int:
    """Offset in the squashfs of a byte whose flip changes or breaks reading `inner`.

    `squashfs` is a scratch copy: it is modified and restored while searching.
    """
    with squashfs.open("rb") as f:
        sb = f.read(96)
    if struct.unpack_from("<I", sb, 0)[0] != SQUASHFS_MAGIC:
        raise ValueError(f"{squashfs} is not a squashfs")
    # File data and fragments lie between the superblock (and the compressor
    # options' metadata block that may follow it) and the inode table.
    lo, hi = 96, struct.unpack_from("<Q", sb, 64)[0]
    if struct.unpack_from("<H", sb, 24)[0] & COMPRESSOR_OPTIONS:
        with squashfs.open("rb") as f:
            f.seek(96)
            lo += 2 + (struct.unpack("<H", f.read(2))[0] & 0x7FFF)
    good = _read(squashfs, inner)
    if good.startswith("error"):
        raise LookupError(f"{inner} cannot be read from {squashfs}")

    def breaks(a: int, b: int) -> bool:
        _flip(squashfs, a, b)
        try:
            return _read(squashfs, inner) != good
        finally:
            _flip(squashfs, a, b)

    if not breaks(lo, hi):
        raise LookupError(f"{inner}'s data is not in the data area of {squashfs}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if breaks(lo, mid):
            hi = mid
        else:
            lo = mid
    return lo


def flip_byte(path: Path, offset: int) -> None:
    _flip(path, offset, offset + 1)
