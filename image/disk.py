"""The bootable disk: an ESP holding the UKI, the squashfs root and its verity hashes.

The ESP is made as a file with mkfs.vfat and filled with mtools, because build
hosts may not mount vfat; systemd-repart then lays out the GPT disk by copying
blocks, so nothing is mounted at all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from uuid import UUID

from image.root import VerityRoot
from image.run import Log, run

MIB = 1 << 20
BOOT_PATH = "::/EFI/BOOT/BOOTX64.EFI"  # the removable-media path every UEFI PC boots


def esp(log: Log, uki: Path, out: Path) -> Path:
    """A FAT ESP with room for the UKI and for one more (a future B slot)."""
    size_mib = max(64, -(-2 * uki.stat().st_size // MIB) + 16)
    out.unlink(missing_ok=True)
    run(log, ["mkfs.vfat", "-C", "-F", "32", "-n", "KUBERMESH", out, str(size_mib * 1024)])
    run(log, ["mmd", "-i", out, "::/EFI", "::/EFI/BOOT"])
    run(log, ["mcopy", "-i", out, uki, BOOT_PATH])
    return out


def _partition(path: Path, **fields: str) -> None:
    path.write_text("[Partition]\n" + "".join(f"{k}={v}\n" for k, v in fields.items()))


def gpt_disk(log: Log, work: Path, esp_image: Path, root: VerityRoot, out: Path) -> Path:
    """ESP + root + verity, sized to fit; the node adds /var on first boot."""
    defs = work / "repart.d"
    defs.mkdir(exist_ok=True)
    _partition(defs / "10-esp.conf", Type="esp", Label="ESP", CopyBlocks=str(esp_image))
    _partition(defs / "20-root.conf", Type="root-x86-64", Label="kubermesh-root",
               UUID=str(root.data_uuid), CopyBlocks=str(root.squashfs), ReadOnly="yes")
    _partition(defs / "30-root-verity.conf", Type="root-x86-64-verity",
               Label="kubermesh-root-verity", UUID=str(root.hash_uuid),
               CopyBlocks=str(root.verity), ReadOnly="yes")
    # The disk's own UUIDs (and the ESP's) follow from the root hash: same root, same disk.
    seed = UUID(bytes=hashlib.sha256(root.root_hash.encode()).digest()[:16])
    out.unlink(missing_ok=True)
    run(log, ["systemd-repart", "--empty=create", "--size=auto", "--dry-run=no", "--no-pager",
              f"--seed={seed}", f"--definitions={defs}", out])
    return out
