"""The bootable disk: an ESP holding the UKI, the squashfs root and its verity hashes,
and the site (its secrets) on a partition of its own.

The root is the same bytes on every disk of an image and in its netboot UKI, and
nodes serve it to their neighbours: no secret may be in it. A USB stick carries
the site in a small raw partition that the initrd copies to RAM (root only).

The ESP is made as a file with mkfs.vfat and filled with mtools, because build
hosts may not mount vfat; systemd-repart then lays out the GPT disk by copying
blocks, so nothing is mounted at all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from uuid import UUID

from firstboot import netboot
from firstboot.files import write_atomic
from image.root import VerityRoot
from image.run import Log, run

MIB = 1 << 20
# The smallest a partition with a few KiB of data may be (systemd-repart's default
# minimum is 10 MiB): its blocks, rounded up to repart's 4 KiB grain.
SMALL = "4096"
# The site's partition: a type of its own, so that the first boot's systemd-repart
# (units/repart.d, a linux-generic /var) never takes it for /var.
SITE_TYPE = "5f6a3c1e-8b2d-4e37-9a41-6b6d65736873"
SITE_LABEL = "kubermesh-site"
SITE_BLOCK = 64 << 10
# The netboot recipe's partition (firstboot/netboot.py): how the node assembles the
# netboot UKI it serves from its ESP, root and verity.
NETBOOT_TYPE = "5f6a3c1e-8b2d-4e37-9a41-6e6574626f6f"
NETBOOT_LABEL = "kubermesh-netboot"
BOOT_PATH = "::/EFI/BOOT/BOOTX64.EFI"  # the removable-media path every UEFI PC boots
ESP_SLACK_MIB = 2  # FAT16's tables, root directory and cluster rounding, with room
ESP_MIN_MIB = 16  # below this, mkfs.vfat's FAT16 has too few clusters


def esp_mib(uki_bytes: int) -> int:
    """The ESP's size: the UKI and FAT's own blocks, no more. Nothing writes to the
    ESP once built (a new image is a new stick or a new netboot), and every MiB of
    it is a MiB of every disk image and stick write."""
    return max(ESP_MIN_MIB, -(-uki_bytes // MIB) + ESP_SLACK_MIB)


def esp(log: Log, uki: Path, out: Path) -> Path:
    """A FAT16 ESP holding the UKI at the removable-media path. FAT16, because FAT32
    needs at least 65525 clusters (32 MiB and more); UEFI reads FAT12, 16 and 32 on
    removable media, and OVMF and PCs boot it."""
    size_mib = esp_mib(uki.stat().st_size)
    out.unlink(missing_ok=True)
    run(log, ["mkfs.vfat", "-C", "-F", "16", "-n", "KUBERMESH", out, str(size_mib * 1024)])
    run(log, ["mmd", "-i", out, "::/EFI", "::/EFI/BOOT"])
    run(log, ["mcopy", "-i", out, uki, BOOT_PATH])
    return out


def _partition(path: Path, **fields: str) -> None:
    path.write_text("[Partition]\n" + "".join(f"{k}={v}\n" for k, v in fields.items()))


def site_blob(site_text: str, out: Path) -> Path:
    """The site partition's contents: the TOML, NUL-padded to whole blocks (0600)."""
    data = site_text.encode()
    if b"\0" in data:
        raise ValueError("the site file contains a NUL byte")
    write_atomic(out, data + b"\0" * (-len(data) % SITE_BLOCK or SITE_BLOCK), 0o600)
    return out


def recipe_blob(recipe: netboot.Recipe, out: Path) -> Path:
    """The netboot recipe partition's contents, padded to whole 4 KiB blocks."""
    data = netboot.encode(recipe)
    write_atomic(out, data + b"\0" * (-len(data) % 4096), 0o644)
    return out


def gpt_disk(log: Log, work: Path, esp_image: Path, root: VerityRoot, site: Path,
             recipe: Path, out: Path) -> Path:
    """ESP + root + verity + site + netboot recipe, sized to fit; the node adds /var
    on first boot."""
    defs = work / "repart.d"
    defs.mkdir(exist_ok=True)
    _partition(defs / "10-esp.conf", Type="esp", Label="ESP", CopyBlocks=str(esp_image))
    _partition(defs / "20-root.conf", Type="root-x86-64", Label="kubermesh-root",
               UUID=str(root.data_uuid), CopyBlocks=str(root.squashfs), ReadOnly="yes")
    _partition(defs / "30-root-verity.conf", Type="root-x86-64-verity",
               Label="kubermesh-root-verity", UUID=str(root.hash_uuid),
               CopyBlocks=str(root.verity), ReadOnly="yes", SizeMinBytes=SMALL)
    _partition(defs / "40-site.conf", Type=SITE_TYPE, Label=SITE_LABEL, CopyBlocks=str(site),
               ReadOnly="yes", SizeMinBytes=SMALL)
    _partition(defs / "45-netboot.conf", Type=NETBOOT_TYPE, Label=NETBOOT_LABEL,
               CopyBlocks=str(recipe), ReadOnly="yes", SizeMinBytes=SMALL)
    # The disk's own UUIDs (and the ESP's) follow from the root hash: same root, same disk.
    seed = UUID(bytes=hashlib.sha256(root.root_hash.encode()).digest()[:16])
    out.unlink(missing_ok=True)
    run(log, ["systemd-repart", "--empty=create", "--size=auto", "--dry-run=no", "--no-pager",
              f"--seed={seed}", f"--definitions={defs}", out])
    return out
