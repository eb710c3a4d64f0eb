"""Unified kernel images: systemd-stub + os-release + command line + kernel + initrd.

systemd 252 has no ukify; objcopy adds the sections, each placed after the
stub's own, page aligned, as ukify does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from image.root import VerityRoot
from image.run import Log, run

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
PAGE = 4096

# For every boot: the console on screen and on the first serial port (VMs,
# servers), no interactive first-boot questions, no GPT auto-mounts (the
# initrd decides about /var, units/dracut/kubermesh-sysroot.sh), and 5 min
# rather than 90 s for starting units, the root's devices among them (systemd
# 252 has no separate device timeout): slow USB sticks and emulated VMs on a
# busy host took longer, and the initrd has no shell to fall back to.
COMMON = ("console=tty0", "console=ttyS0,115200", "systemd.firstboot=off",
          "systemd.gpt_auto=0", "rd.systemd.gpt_auto=0",
          "systemd.default_timeout_start_sec=300")


def disk_cmdline(root: VerityRoot) -> str:
    """The kernel command line of a disk boot: the root hash pins the whole root."""
    return " ".join((
        f"roothash={root.root_hash}",
        f"systemd.verity_root_data=PARTUUID={root.data_uuid}",
        f"systemd.verity_root_hash=PARTUUID={root.hash_uuid}",
        "root=/dev/mapper/root", "rootfstype=squashfs", "ro", *COMMON))


@dataclass(frozen=True)
class Section:
    size: int
    vma: int
    offset: int  # in the file


def sections(log: Log, efi: Path) -> dict[str, Section]:
    """A PE file's sections, from `objdump -h`."""
    out = run(log, ["objdump", "-h", efi], capture=True)
    return {m.group(1): Section(int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16))
            for m in re.finditer(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+"
                                 r"([0-9a-f]+)\s", out, re.MULTILINE)}


def _stub_end(log: Log) -> int:
    return max(s.vma + s.size for s in sections(log, STUB).values())


def _align(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


def build_uki(log: Log, work: Path, out: Path, *, os_release: Path, cmdline: str,
              kernel: Path, initrd: Path) -> Path:
    cmdline_file = work / f"{out.stem}.cmdline"
    cmdline_file.write_text(cmdline + "\0")
    sections = ((".osrel", os_release), (".cmdline", cmdline_file),
                (".linux", kernel), (".initrd", initrd))
    cmd: list[str | Path] = ["objcopy"]
    offset = _align(_stub_end(log))
    for name, path in sections:
        cmd += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={offset:#x}"]
        offset = _align(offset + path.stat().st_size)
    run(log, [*cmd, STUB, out])
    return out
