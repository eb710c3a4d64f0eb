"""The root file system: a squashfs of the tree, and its dm-verity hash tree."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from image.errors import BuildError
from image.run import Log, run

# Not in the root: the kernel and initrd are in the UKI; the API file systems are mounted.
# zstd 19 instead of 6: the root is 12 % smaller (what a netbooted node downloads
# and keeps in RAM) for about a minute more of build on two cores; reading it
# back is as fast.
ZSTD_LEVEL = 19
EXCLUDE = ("boot/*", "vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old")


@dataclass(frozen=True)
class VerityRoot:
    squashfs: Path
    verity: Path
    root_hash: str

    # systemd's convention (and systemd-gpt-auto's): the root partition's UUID is
    # the first half of the root hash, the verity partition's the second.
    @property
    def data_uuid(self) -> UUID:
        return UUID(self.root_hash[:32])

    @property
    def hash_uuid(self) -> UUID:
        return UUID(self.root_hash[32:64])


def squashfs(log: Log, tree: Path, out: Path) -> Path:
    cmd: list[str | Path] = ["mksquashfs", tree, out, "-noappend", "-quiet", "-no-progress",
                             "-comp", "zstd", "-Xcompression-level", str(ZSTD_LEVEL), "-b", "1M",
                             "-wildcards"]
    for pattern in EXCLUDE:
        cmd += ["-e", pattern]
    run(log, cmd)
    return out


def verity(log: Log, data: Path, hashes: Path) -> VerityRoot:
    """dm-verity hash tree of `data`; the root hash is what the UKI's command line pins."""
    out = run(log, ["veritysetup", "format", data, hashes], capture=True)
    log.write(out)
    m = re.search(r"^Root hash:\s+([0-9a-f]{64})$", out, re.MULTILINE)
    if not m:
        raise BuildError("veritysetup format printed no root hash", hint=f"see {log.path}")
    return VerityRoot(data, hashes, m.group(1))
