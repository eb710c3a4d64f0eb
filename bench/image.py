"""Image benchmarks: cold and warm build time, artifact sizes, boot time under QEMU.

    python -m bench.image build [DIR] [--cold]
                                           time `kubermesh build` (cold: empty download cache)
    python -m bench.image sizes [DIR]      sizes of the raw disk, UKI, root, and what dominates
    python -m bench.image boot [DIR]       boot kubermesh.raw under OVMF (TCG unless KVM works)
                                           to multi-user, as seen over SSH and by systemd-analyze

Figures are printed and written to bench/results/image-*.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _save(name: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"image-{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))


def build(cold: bool, output: Path) -> None:
    from image.build import Options
    from image.build import build as run_build

    with tempfile.TemporaryDirectory(prefix="kubermesh-bench-cache-", dir=ROOT) as tmp:
        cache = Path(tmp) if cold else ROOT / "mkosi.cache"
        start = time.monotonic()
        run_build(Options(output=output, kubernetes="none", cache=cache))
        took = time.monotonic() - start
    manifest = json.loads((output / "manifest.json").read_text())
    _save("build-cold" if cold else "build-warm", {
        "kind": "cold (empty download cache)" if cold else "warm (download cache filled)",
        "seconds": round(took, 1), "steps": manifest["step_seconds"],
        "command": f"python -m bench.image build{' --cold' if cold else ''}"})


# Issue targets for the image without its Kubernetes binaries, in MB (10^6 bytes).
TARGET_MB = {"raw": 200, "netboot_uki": 150}


def kubernetes_share(output: Path) -> int:
    """What the Kubernetes binaries add to the root, compressed as the root is: they
    are taken out of the built root partition and squashed alone (same compressor,
    level and block size)."""
    from image.kubesource import COMPONENTS
    from image.root import ZSTD_LEVEL

    raw = output / "kubermesh.raw"
    table = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], check=True,
                                      capture_output=True, text=True).stdout)
    part = next(p for p in table["partitiontable"]["partitions"]
                if p.get("name") == "kubermesh-root")
    with tempfile.TemporaryDirectory(prefix="kubermesh-bench-sizes-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        with raw.open("rb") as src, (work / "root.sqfs").open("wb") as dst:
            src.seek(part["start"] * 512)
            left = part["size"] * 512
            while left:
                chunk = src.read(min(left, 1 << 22))
                dst.write(chunk)
                left -= len(chunk)
        shipped = [f"usr/bin/{c}" for c in COMPONENTS]
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(work / "tree"), str(work / "root.sqfs"),
                        *shipped], check=True, capture_output=True)
        present = [str(work / "tree" / f) for f in shipped if (work / "tree" / f).exists()]
        if not present:
            return 0
        subprocess.run(["mksquashfs", *present, str(work / "k8s.sqfs"), "-noappend", "-quiet",
                        "-no-progress", "-comp", "zstd", "-Xcompression-level", str(ZSTD_LEVEL),
                        "-b", "1M"], check=True, capture_output=True)
        return (work / "k8s.sqfs").stat().st_size


def sizes(output: Path) -> None:
    m = json.loads((output / "manifest.json").read_text())
    mib = {k: round(v / 2**20, 1) for k, v in m["sizes"].items() if isinstance(v, int)}
    top = {k: round(v / 2**20, 1) for k, v in m["sizes"]["tree_largest_dirs"].items()}
    k8s = kubernetes_share(output)
    without = {k: round((m["sizes"][k] - k8s) / 1e6, 1) for k in TARGET_MB}
    _save("sizes", {"MiB": mib, "tree_largest_dirs_MiB_uncompressed": top,
                    "kubernetes_binaries_compressed_MB": round(k8s / 1e6, 1),
                    "without_kubernetes_MB": without,
                    "targets_MB": TARGET_MB,
                    "met": {k: without[k] <= v for k, v in TARGET_MB.items()},
                    "command": "python -m bench.image sizes"})


def boot(output: Path) -> None:
    from tests.vm.qemu import VM, kvm_works

    accel = "kvm" if kvm_works() else "tcg"
    with tempfile.TemporaryDirectory(prefix="kubermesh-bench-boot-") as tmp:
        work = Path(tmp)
        key = work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        disk = work / "disk.raw"
        subprocess.run(["cp", "--sparse=always", str(output / "kubermesh.raw"), str(disk)],
                       check=True)
        with disk.open("r+b") as f:
            f.truncate(4 << 30)
        vm = VM("bench", disk, work, key.with_suffix(".pub").read_text().strip(), key, accel=accel)
        start = time.monotonic()
        try:
            vm.start()
            ssh_s = vm.wait_ssh()
            state = vm.ssh("systemctl is-system-running --wait", timeout=900,
                           check=False).stdout.strip()
            ready_s = time.monotonic() - start
            analyze = vm.ssh("systemd-analyze time", check=False).stdout.strip()
            target = vm.ssh("systemd-analyze critical-chain multi-user.target --no-pager",
                            check=False).stdout.strip()
        finally:
            vm.stop()
    _save(f"boot-{accel}", {
        "accel": accel, "vcpus": 1, "memory_mib": vm.memory,
        "qemu_start_to_ssh_s": round(ssh_s, 1),
        "qemu_start_to_multi_user_s": round(ready_s, 1), "system_state": state,
        "systemd_analyze_time": analyze, "critical_chain": target.splitlines()[:12],
        "command": "python -m bench.image boot"})


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.image", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("build", "sizes", "boot"))
    p.add_argument("output", nargs="?", type=Path,
                   help="image directory (default: out/; for build, a scratch directory)")
    p.add_argument("--cold", action="store_true", help="build with an empty download cache")
    a = p.parse_args()
    if a.what == "build":
        if a.output is None:  # a benchmark build does not replace out/ unless asked
            build(a.cold, ROOT / "out-bench")
            shutil.rmtree(ROOT / "out-bench", ignore_errors=True)
        else:
            build(a.cold, a.output)
    elif a.what == "sizes":
        sizes(a.output or ROOT / "out")
    else:
        boot(a.output or ROOT / "out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
