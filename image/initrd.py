"""The initrd: dracut from the image's own tree, with only what a verity root needs."""

from __future__ import annotations

from pathlib import Path

from image.run import Log, nspawn

# dracut modules: systemd in the initrd, dm-verity root, and kubermesh's own
# (/var, writable /etc; units/dracut/).
MODULES = ("base", "fs-lib", "systemd", "systemd-initrd", "systemd-veritysetup", "dm", "udev-rules",
           "kubermesh")
# Storage a UEFI PC or a VM may boot from, and the file systems of the root and /var.
DRIVERS = (
    "virtio_blk", "virtio_scsi", "virtio_pci", "nvme", "ahci", "sd_mod", "sr_mod",
    "usb_storage", "uas", "xhci_pci", "xhci_hcd", "ehci_pci", "ohci_pci", "uhci_hcd",
    "mmc_block", "sdhci_pci", "sdhci_acpi",
    "dm_verity", "squashfs", "overlay", "ext4", "loop",
)
# dracut's dm module brings every device-mapper and MD RAID target; the root needs
# dm-verity only (a netbooted node holds the initrd in RAM). Names as kmod spells
# them (underscores): dracut matches these against kmod's names.
OMIT_DRIVERS = ("bcache", "raid456", "raid0", "raid1", "raid10", "linear", "multipath",
                "md_mod", "dm_thin_pool", "dm_cache", "dm_cache_smq", "dm_zoned", "dm_raid",
                "dm_mirror", "dm_log", "dm_region_hash", "dm_snapshot", "dm_persistent_data",
                "dm_bio_prison", "dm_multipath", "raid6_pq", "async_raid6_recov", "async_pq",
                "async_xor", "async_memcpy", "async_tx", "xor", "faulty", "md_cluster",
                "dm_crypt", "dm_delay", "dm_era", "dm_flakey", "dm_integrity", "dm_log_userspace",
                "dm_log_writes", "dm_queue_length", "dm_round_robin", "dm_service_time",
                "dm_switch", "dm_unstripe", "dm_writecache", "dm_zero")
INITRD = "boot/initrd-kubermesh.img"
# zstd at its highest regular level: 11 % smaller than dracut's default (-15), and a
# netbooted node holds the initrd in RAM; the kernel unpacks it as fast.
COMPRESS = "zstd -19 -q -T0"


def dracut(log: Log, tree: Path, kver: str) -> Path:
    """Build the initrd inside the tree; returns its path on the host."""
    nspawn(log, tree, [
        "dracut", "--force", "--quiet", "--no-hostonly", "--no-hostonly-cmdline",
        "--reproducible", "--compress", COMPRESS,
        "--modules", " ".join(MODULES), "--drivers", " ".join(DRIVERS),
        "--omit-drivers", " ".join(OMIT_DRIVERS),
        "--kver", kver, f"/{INITRD}"])
    return tree / INITRD
