"""The image's root tree: mkosi builds it, then the project's own parts go in.

Everything here writes into the tree; nothing touches the build host.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from image.errors import BuildError
from image.run import Log, nspawn, run
from mesh.frr import WATCHFRR_OPTIONS

# The venv holding the project's code and its pinned dependencies in the image.
VENV = "/usr/lib/kubermesh"
SITE_PATH = "etc/kubermesh/site.toml"
RUN_SITE = "/run/kubermesh/site.toml"  # units/dracut/kubermesh-sysroot.sh writes it
# Packages of the project's wheel that no node runs, left out of the image: the
# lab (network namespaces for the tests, benchmarks and `kubermesh lab`).
NOT_SHIPPED = ("lab",)
# Dependencies PyPI has no wheel of, built on the build host from their pinned
# sdist (everything else is a manylinux wheel). The host is Debian 12 like the
# image, so systemd-python's extension links the same libsystemd as the node's.
FROM_SOURCE = ("systemd-python",)
# The image's /var is shipped here and copied into the node's /var at boot
# (see units/dracut/kubermesh-sysroot.sh): /var itself is a mount point.
FACTORY_VAR = "usr/share/factory/var"


@dataclass(frozen=True)
class Sources:
    """Where the build's inputs are: the project checkout."""

    root: Path

    @property
    def mkosi_conf(self) -> Path:
        return self.root / "mkosi.conf"

    @property
    def units(self) -> Path:
        return self.root / "units"

    @classmethod
    def find(cls) -> Sources:
        root = Path(__file__).resolve().parent.parent
        if not (root / "mkosi.conf").is_file() or not (root / "units").is_dir():
            raise BuildError(f"no mkosi.conf and units/ beside {Path(__file__).parent}",
                             hint="run kubermesh build from a checkout (./dev.sh build)")
        return cls(root)


def mkosi(log: Log, src: Sources, tree: Path, cache: Path, version: str) -> None:
    """Debian bookworm and the image's packages, as a directory (mkosi.conf)."""
    cache.mkdir(parents=True, exist_ok=True)
    run(log, ["mkosi", "--force", "--output", tree, "--cache", cache,
              "--image-version", version, "build"], cwd=src.root,
        hint=f"mkosi's output is in {log.path}; package downloads are cached in {cache}")


def install_python(log: Log, src: Sources, tree: Path, wheels: Path) -> dict[str, str]:
    """The project and its pinned dependencies, in a venv of the image's own python3.

    The wheels were fetched on the host (same versions as requirements.lock); pip
    runs inside the tree with the host's pip module, so none of pip lands in the image.
    Returns the installed distributions and versions. The NOT_SHIPPED packages are
    removed from the venv afterwards; the kubermesh distribution stays installed.
    """
    import pip  # the build venv's pip

    pip_dir = Path(pip.__file__).parent
    binds = {wheels: "/run/kubermesh-wheels", pip_dir: "/run/kubermesh-pip/pip"}
    script = (
        f"set -e; python3 -m venv --without-pip {VENV}; "
        f"PYTHONPATH=/run/kubermesh-pip {VENV}/bin/python3 -m pip install --quiet "
        "--disable-pip-version-check --no-cache-dir --no-index --no-deps "
        "--find-links /run/kubermesh-wheels -r /run/kubermesh-wheels/requirements.lock "
        "/run/kubermesh-wheels/kubermesh-*.whl; "
        f"PYTHONPATH=/run/kubermesh-pip {VENV}/bin/python3 -m pip list "
        "--disable-pip-version-check --format=json"
    )
    out = nspawn(log, tree, ["/bin/sh", "-c", script], binds=binds, capture=True)
    installed = {d["name"]: d["version"] for d in json.loads(out.strip().splitlines()[-1])}
    # The project's wheel holds them (one distribution for the checkout's tools),
    # but nothing on a node imports them: the image is no test bed.
    for package in NOT_SHIPPED:
        for d in (tree / VENV.lstrip("/")).glob(f"lib/python3*/site-packages/{package}"):
            shutil.rmtree(d)
    link = tree / "usr/bin/kubermesh"
    link.unlink(missing_ok=True)
    link.symlink_to(f"{VENV}/bin/kubermesh")
    return installed


def split_lock(text: str) -> tuple[str, list[str]]:
    """requirements.lock as the requirements fetched as wheels, and the pins
    (`name==version`) of those built from source (FROM_SOURCE)."""
    def name(line: str) -> str:
        return line.split("==")[0].strip().lower().replace("_", "-")

    lines = text.splitlines()
    source = [ln.strip() for ln in lines if name(ln) in FROM_SOURCE]
    binary = [ln for ln in lines if name(ln) not in FROM_SOURCE]
    return "\n".join(binary) + "\n", source


def fetch_wheels(log: Log, src: Sources, wheels: Path, cache: Path) -> None:
    """The pinned runtime wheels (cached) and a wheel of the project itself."""
    lock = src.root / "requirements.lock"
    pinned = cache / "wheels"
    stamp = pinned / ".lock"
    if not stamp.is_file() or stamp.read_text() != lock.read_text():
        shutil.rmtree(pinned, ignore_errors=True)
        pinned.mkdir(parents=True)
        binary, source = split_lock(lock.read_text())
        (pinned / "binary.lock").write_text(binary)
        run(log, [sys.executable, "-m", "pip", "download", "--quiet",
                  "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
                  "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                  "--platform", "any", "-r", pinned / "binary.lock", "-d", pinned],
            hint="the pinned Python wheels could not be downloaded")
        if source:
            # Built by this venv's Python 3.11 (the image's version) and its pinned
            # setuptools; needs libsystemd-dev, pkg-config, gcc, python3-dev.
            names = ",".join(FROM_SOURCE)
            run(log, [sys.executable, "-m", "pip", "wheel", "--quiet",
                      "--disable-pip-version-check", "--no-cache-dir", "--no-deps",
                      "--no-build-isolation", "--no-binary", names, "--wheel-dir", pinned,
                      *source],
                hint=f"{', '.join(source)} could not be built from source "
                     "(./dev.sh setup installs what that needs)")
        stamp.write_text(lock.read_text())
    wheels.mkdir(parents=True)
    for w in pinned.glob("*.whl"):
        shutil.copy2(w, wheels)
    shutil.copy2(lock, wheels / "requirements.lock")
    run(log, [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
              "--no-deps", "--no-build-isolation", "--wheel-dir", wheels, src.root])


def install_units(log: Log, src: Sources, tree: Path) -> list[str]:
    """units/ into the tree: units, presets, tmpfiles, sysctl, modules to load, the
    initrd's dracut module.

    Units are enabled by the preset file, never one by one. Returns the units.
    """
    u = src.units
    lib = tree / "usr/lib"
    places = {
        "system": lib / "systemd/system",
        "system-preset": lib / "systemd/system-preset",
        "tmpfiles.d": lib / "tmpfiles.d",
        "sysctl.d": lib / "sysctl.d",
        "modules-load.d": lib / "modules-load.d",
        "repart.d": lib / "kubermesh/repart.d",
        "sshd_config.d": tree / "etc/ssh/sshd_config.d",
        "dracut": lib / "dracut/modules.d/90kubermesh",
        "network": lib / "systemd/network",
        "networkd.conf.d": lib / "systemd/networkd.conf.d",
    }
    for sub, dest in places.items():
        if not (u / sub).is_dir():
            continue
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted((u / sub).iterdir()):
            if f.is_file():
                shutil.copy2(f, dest / f.name)
            elif f.is_dir():  # drop-ins, e.g. containerd.service.d/
                shutil.copytree(f, dest / f.name, dirs_exist_ok=True)
    units = sorted(f.name for f in (u / "system").iterdir() if f.is_file())
    presets = [ln.split()[1] for p in (u / "system-preset").glob("*.preset")
               for ln in p.read_text().splitlines() if ln.startswith("enable ")]
    run(log, ["systemctl", "--root", tree, "preset", *presets])
    # networkd's [Install] Also= enables wait-online, which fails on a node whose
    # links have no DHCP (every mesh link): nothing in the image waits for "online".
    # hwdb-update would recompile udev's hardware database into /etc from sources
    # the image leaves out (prune): the shipped hwdb.bin is the database. (Debian
    # ships no such unit today; the mask keeps a future one from running.)
    # Debian's etcd.service would run a single-node etcd on every node: a node runs
    # a member only while it holds a control-plane slot (kubermesh-etcd.service).
    run(log, ["systemctl", "--root", tree, "mask", "systemd-networkd-wait-online.service",
              "systemd-hwdb-update.service", "etcd.service"])
    return units


# bfdd runs real-time (round robin, the lowest priority), started so by FRR's own
# init script also when watchfrr restarts it. BFD declares a neighbour dead after
# 300 ms (100 ms x 3) without its packets: a bfdd waiting that long behind busy
# pods (runc, the CNI plugins, kube-proxy's rules) on a small node drops every
# adjacency of a healthy node, the whole mesh loses it, and its pods are evicted.
# Only bfdd: with zebra and ospf6d real-time too, a 1-CPU guest's kernel throttled
# them at start-up, and the runtime, starved, lost netlink messages by thousands.
BFDD_WRAP = "/usr/bin/chrt --rr 1"


def tune_frr(tree: Path) -> None:
    """The mesh's daemons on (ospf6d, bfdd; zebra always runs), watchfrr's options
    (WATCHFRR_OPTIONS), and bfdd real-time (BFDD_WRAP)."""
    daemons = tree / "etc/frr/daemons"
    text = daemons.read_text()
    edits = {"\n#watchfrr_options=\"\"":
             f'\nwatchfrr_options="{" ".join(WATCHFRR_OPTIONS)}"',
             "\nospf6d=no": "\nospf6d=yes", "\nbfdd=no": "\nbfdd=yes",
             "\n#all_wrap=\"\"": f'\n#all_wrap=""\nbfdd_wrap="{BFDD_WRAP}"'}
    for old, new in edits.items():
        if old not in text:
            raise BuildError(f"{daemons} has no {old.strip()!r} line to set",
                             hint="FRR's packaging changed: update image/tree.py")
        text = text.replace(old, new, 1)
    daemons.write_text(text)


def make_immutable(log: Log, tree: Path) -> None:
    """Shape the tree for a read-only root that is still a normal system."""
    # No SSH host keys baked in: every node makes its own on first boot.
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # An empty machine-id: the initrd fills it per node (see kubermesh-sysroot.sh).
    (tree / "etc/machine-id").write_text("")
    # /root and /home live on /var: the root file system is read-only. What the
    # image had in them becomes part of the factory /var.
    for d, target in (("root", "var/roothome"), ("home", "var/home")):
        p = tree / d
        if p.is_symlink():
            p.unlink()
        else:
            if (tree / target).exists():
                shutil.rmtree(tree / target)
            os.rename(p, tree / target)
        p.symlink_to(target)
    # The shipped /var becomes the factory copy; /var is an empty mount point.
    for junk in ("var/cache/apt", "var/lib/apt/lists", "var/log/apt", "var/cache/debconf"):
        if (tree / junk).is_dir():
            shutil.rmtree(tree / junk)
    # /var/run and /var/lock point into /run; anything written under them while
    # building (nspawn runs) is not part of the image.
    for link, target in (("var/run", "../run"), ("var/lock", "../run/lock")):
        p = tree / link
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
        p.symlink_to(target)
    factory = tree / FACTORY_VAR
    if factory.exists():
        shutil.rmtree(factory)
    factory.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tree / "var", factory)
    (tree / "var").mkdir(mode=0o755)


def link_site(tree: Path) -> None:
    """/etc/kubermesh/site.toml points into RAM, where the initrd puts the site from
    the disk's site partition (image/disk.py); the root itself holds no secret."""
    path = tree / SITE_PATH
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.unlink(missing_ok=True)
    path.symlink_to(RUN_SITE)


def debian_packages(log: Log, tree: Path) -> dict[str, str]:
    """Every Debian package in the tree and its version."""
    admin = tree / "var/lib/dpkg"
    if not admin.is_dir():
        admin = tree / FACTORY_VAR / "lib/dpkg"
    out = run(log, ["dpkg-query", "--admindir", admin, "-W", "-f", "${Package}\t${Version}\n"],
              capture=True)
    return dict(line.split("\t", 1) for line in out.splitlines() if line)


def kernel(tree: Path) -> tuple[str, Path]:
    """The tree's one kernel: its release and its vmlinuz."""
    kernels = sorted((tree / "usr/lib/modules").iterdir()) if (
        tree / "usr/lib/modules").is_dir() else []
    if len(kernels) != 1:
        raise BuildError(f"the tree has {len(kernels)} kernels, expected one",
                         hint="mkosi.conf must install exactly one linux-image package")
    kver = kernels[0].name
    vmlinuz = tree / f"boot/vmlinuz-{kver}"
    if not vmlinuz.is_file():
        raise BuildError(f"the tree has no /boot/vmlinuz-{kver}")
    return kver, vmlinuz


# What a mesh PC cannot use, left out of the root (and so out of the RAM of a
# netbooted node): sound, radios, cameras and TV cards, GPUs beyond the firmware's
# framebuffer (efifb, built in, and the small drm drivers stay), InfiniBand,
# Fibre Channel and iSCSI HBAs, sensors for industrial I/O, drivers still in
# staging, and cluster or flash file systems. NICs, storage (SATA, NVMe, USB,
# SCSI/SAS), USB, HID, the file systems a node or a pod volume mounts (ext4,
# xfs, btrfs, vfat, NFS, SMB, Ceph), netfilter, bridges and tunnels all stay.
PRUNED_MODULES = (
    "sound", "drivers/media", "drivers/staging", "drivers/iio", "drivers/isdn",
    "drivers/comedi", "drivers/infiniband", "drivers/bluetooth", "drivers/nfc",
    "drivers/net/wireless", "drivers/net/wwan", "drivers/net/can", "drivers/net/wan",
    "drivers/net/hamradio", "drivers/net/ieee802154", "drivers/target", "drivers/mtd",
    "drivers/gpu/drm/amd", "drivers/gpu/drm/i915", "drivers/gpu/drm/nouveau",
    "drivers/gpu/drm/radeon", "drivers/gpu/drm/vmwgfx", "drivers/gpu/drm/gma500",
    "drivers/scsi/lpfc", "drivers/scsi/qla2xxx", "drivers/scsi/qla4xxx", "drivers/scsi/bfa",
    "drivers/scsi/cxgbi", "drivers/scsi/be2iscsi", "drivers/scsi/bnx2fc", "drivers/scsi/bnx2i",
    "drivers/scsi/qedf", "drivers/scsi/qedi", "drivers/scsi/csiostor", "drivers/scsi/fnic",
    "drivers/scsi/snic",
    "net/wireless", "net/mac80211", "net/bluetooth", "net/nfc", "net/ieee802154",
    "net/mac802154", "net/can",
    "fs/ocfs2", "fs/gfs2", "fs/dlm", "fs/orangefs", "fs/afs", "fs/nilfs2", "fs/jffs2",
    "fs/ubifs", "fs/reiserfs", "fs/jfs", "fs/nfsd",
    "lib/test_*.ko",  # the kernel's self-tests
    # Old or foreign link layers and protocols no mesh PC speaks (ATM, AppleTalk,
    # amateur radio, DCCP, RDS, SMC, TIPC, AFS's RxRPC, Phonet, Qualcomm's IPC,
    # 6LoWPAN, parallel-port and serial IP), file systems of other systems (Amiga,
    # BeOS, HFS, HPFS, QNX, SysV, UFS, VirtualBox and 9p shares, F2FS for phones,
    # eCryptfs), buses and machines a PC of the mesh is not (FireWire, parallel
    # port, memory sticks, 1-Wire, SoundWire, GNSS, Android, braille consoles, Xen
    # and Hyper-V guests, USB gadget mode, joysticks, tablets and touchscreens) and
    # KVM (a node runs containers, not VMs). PCMCIA's core stays (the b44 and ssb
    # NIC drivers need it), and so does NSH (Open vSwitch needs it).
    *(f"net/{m}" for m in ("6lowpan", "9p", "appletalk", "atm", "ax25", "dccp", "ife", "kcm",
                           "lapb", "netrom", "phonet", "qrtr", "rds", "rose", "rxrpc", "smc",
                           "tipc")),
    *(f"fs/{m}" for m in ("9p", "adfs", "affs", "befs", "bfs", "coda", "ecryptfs", "efs",
                          "f2fs", "freevxfs", "hfs", "hfsplus", "hpfs", "minix", "omfs", "qnx4",
                          "qnx6", "romfs", "sysv", "ufs", "vboxsf", "zonefs")),
    *(f"drivers/{m}" for m in ("accessibility", "android", "atm", "firewire", "gnss", "hv",
                               "memstick", "parport", "slimbus", "soundwire", "w1",
                               "xen", "usb/gadget", "input/joystick", "input/tablet",
                               "input/touchscreen", "net/appletalk", "net/arcnet",
                               "net/fddi", "net/hippi", "net/hyperv", "net/plip",
                               "net/xen-netback", "net/xen-netfront.ko")),
    "arch/x86/kvm",
    # Server and cloud adapters that PCs do not take: NICs from makers of data-centre
    # NICs only (Intel, Broadcom, Realtek, Mellanox ConnectX, Aquantia, the other PC
    # makers, and stmmac, which some Intel Atom boards use, stay), the NICs of cloud
    # VMs, and SCSI for old parallel buses, IBM Power, FCoE and the kernel's SCSI test
    # driver. RAID and SAS HBAs stay.
    *(f"drivers/net/ethernet/{m}" for m in ("amazon", "brocade", "cavium", "chelsio", "cisco",
                                            "emulex", "google", "huawei", "microsoft",
                                            "neterion", "netronome", "qlogic", "sfc")),
    *(f"drivers/scsi/{m}" for m in ("aic7xxx", "aic94xx", "sym53c8xx_2", "pmcraid.ko", "ipr.ko",
                                    "fcoe", "libfc", "pcmcia", "scsi_debug.ko")),
    # Framebuffer drivers for old video chips (Matrox, ATI Rage, S3, SiS, VIA, ...):
    # a PC's console is the firmware's framebuffer (efifb, built in) or its DRM driver.
    "drivers/video/fbdev/*.ko",
    *(f"drivers/video/fbdev/{m}" for m in ("aty", "kyro", "matrox", "mb862xx", "savage", "sis",
                                           "vermilion", "via")),
)
# Files nothing on a node runs (globs under the tree):
PRUNED_FILES = (
    # containerd's legacy v1 shims: the CRI uses io.containerd.runc.v2.
    "usr/bin/containerd-shim", "usr/bin/containerd-shim-runc-v1",
    # CNI plugins our pod network does not chain (mesh/cni.py: bridge with
    # host-local; containerd's CRI runs loopback): the runtime writes the only CNI
    # configuration, so no other plugin is ever run.
    *(f"usr/lib/cni/{p}" for p in ("bandwidth", "dhcp", "firewall", "host-device", "ipvlan",
                                    "macvlan", "portmap", "ptp", "sbr", "static", "tuning",
                                    "vlan", "vrf")),
    # Perl and debconf: only Debian's packaging scripts use them, and an immutable
    # node runs none (no apt, no dpkg --configure).
    "usr/bin/perl", "usr/bin/perl5.*", "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/share/perl5",
    # FRR's other routing daemons: a node runs zebra, ospf6d, bfdd, staticd, watchfrr.
    *(f"usr/lib/frr/{d}" for d in ("babeld", "bgpd", "eigrpd", "fabricd", "isisd", "ldpd",
                                    "nhrpd", "ospfd", "pathd", "pbrd", "pimd", "ripd", "ripngd",
                                    "vrrpd")),
    "usr/lib/x86_64-linux-gnu/frr/modules/bgpd_bmp.so",
    "usr/lib/x86_64-linux-gnu/frr/modules/pathd_pcep.so",
    # glibc's iconv converters (UTF-8 and Latin-1 are built in; nothing here converts).
    "usr/lib/x86_64-linux-gnu/gconv",
    # The hardware database's sources: udev reads the compiled hwdb.bin, and
    # systemd-hwdb-update is masked (install_units) so that nothing recompiles it.
    "usr/lib/udev/hwdb.d",
    # Python's regression-test support and pydoc's topic texts (for help() at a prompt).
    "usr/lib/python3.11/test", "usr/lib/python3.11/pydoc_data",
    # apt: an immutable node installs no packages.
    "usr/bin/apt", "usr/bin/apt-*", "usr/lib/apt", "usr/lib/x86_64-linux-gnu/libapt-*",
)


# udev's hardware databases that only name things for people (vendor and model
# names of PCI, USB, ACPI, Bluetooth, SDIO and VMBus devices, the IEEE's MAC
# prefixes): most of hwdb.bin, and nothing on a node reads them. Kept: the ones
# that change how devices behave (keyboards, mice, sensors, autosuspend, NIC names).
HWDB_NAMES_ONLY = ("20-OUI.hwdb", "20-*-vendor*.hwdb", "20-*-classes.hwdb",
                   "20-vmbus-class.hwdb", "70-sound-card.hwdb", "70-cameras.hwdb",
                   "70-av-production.hwdb", "70-analyzers.hwdb", "70-pda.hwdb")


def trim_hwdb(log: Log, tree: Path) -> dict[str, int]:
    """Compile udev's hwdb.bin again without HWDB_NAMES_ONLY (before `prune` drops
    the sources); returns the bytes it saved."""
    src = tree / "usr/lib/udev/hwdb.d"
    binary = tree / "usr/lib/udev/hwdb.bin"
    if not src.is_dir() or not binary.is_file():
        log.write("hwdb: no hwdb.d or hwdb.bin in the tree, left as it is")
        return {}
    before = binary.stat().st_size
    for pattern in HWDB_NAMES_ONLY:
        for path in src.glob(pattern):
            path.unlink()
    nspawn(log, tree, ["systemd-hwdb", "update", "--usr"])
    return {"usr/lib/udev/hwdb.bin (names only)": before - binary.stat().st_size}


def prune(log: Log, tree: Path, kver: str) -> dict[str, int]:
    """Remove PRUNED_MODULES and PRUNED_FILES (then depmod); returns the bytes each
    path removed, for the manifest. A pattern that matches nothing (a kernel without
    that directory) is named in the build log."""
    removed: dict[str, int] = {}
    base = tree / "usr/lib/modules" / kver / "kernel"
    wanted = [(base, m, f"modules/{m}") for m in PRUNED_MODULES]
    wanted += [(tree, f, f) for f in PRUNED_FILES]
    for top, pattern, name in wanted:
        paths = sorted(top.glob(pattern))
        if not paths:
            log.write(f"prune: nothing matches {name} (already gone)")
        for path in paths:
            rel = str(path.relative_to(tree))
            if path.is_dir() and not path.is_symlink():
                removed[rel] = sum(f.lstat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
            else:
                removed[rel] = path.lstat().st_size
                path.unlink()
    return removed


def depmod(log: Log, tree: Path, kver: str) -> None:
    """Refresh the tree's module index after prune, with the image's own kmod."""
    nspawn(log, tree, ["depmod", kver])


def write_os_release(tree: Path, version: str) -> None:
    """Name the image in os-release (IMAGE_ID, IMAGE_VERSION), as the UKI shows it."""
    path = tree / "usr/lib/os-release"
    lines = [ln for ln in path.read_text().splitlines()
             if not ln.startswith(("IMAGE_ID=", "IMAGE_VERSION="))]
    path.write_text("\n".join([*lines, "IMAGE_ID=kubermesh", f"IMAGE_VERSION={version}"]) + "\n")


def largest(tree: Path, count: int = 10) -> dict[str, int]:
    """The biggest directories of the root, in bytes before compression: what dominates.

    Looks into /usr and /usr/lib, where nearly everything is.
    """

    def du(d: Path) -> int:
        return sum(f.lstat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())

    dirs = [d for d in tree.iterdir() if d.name != "usr"]
    dirs += [d for d in (tree / "usr").iterdir() if d.name != "lib"]
    dirs += list((tree / "usr/lib").iterdir())
    sizes = {str(d.relative_to(tree)): du(d) for d in dirs
             if d.is_dir() and not d.is_symlink()}
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:count])
