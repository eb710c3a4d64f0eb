"""Fast checks of the image build's own logic (no mkosi, no root needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from image import build, disk, kubernetes, manifest, netboot, tree, uki
from image.errors import BuildError
from image.root import VerityRoot
from image.run import Log
from mesh import site as sitefile

HASH = "93a6ad286f4abdd02d3012411b922adfb0f70a42731e387dd317699405ff79a1"


def _root() -> VerityRoot:
    return VerityRoot(Path("root.squashfs"), Path("root.verity"), HASH)


def test_partition_uuids_are_the_root_hash_halves() -> None:
    r = _root()
    assert r.data_uuid.hex == HASH[:32]
    assert r.hash_uuid.hex == HASH[32:]


def test_disk_cmdline_pins_the_root_hash() -> None:
    line = uki.disk_cmdline(_root())
    assert f"roothash={HASH}" in line.split()
    assert f"systemd.verity_root_data=PARTUUID={_root().data_uuid}" in line.split()
    assert f"systemd.verity_root_hash=PARTUUID={_root().hash_uuid}" in line.split()
    assert "root=/dev/mapper/root" in line.split() and "ro" in line.split()


def test_netboot_cmdline_uses_the_same_root_hash() -> None:
    line = netboot.netboot_cmdline(_root())
    assert f"roothash={HASH}" in line.split()
    assert "kubermesh.netroot=1" in line.split()


def test_kubernetes_none_and_directories(tmp_path: Path) -> None:
    assert kubernetes.resolve("none").kind == "none"
    assert kubernetes.resolve("debian-source").kind == "debian-source"
    with pytest.raises(BuildError, match="not auto, upstream, debian-source, none or a"):
        kubernetes.resolve(str(tmp_path / "missing"))
    with pytest.raises(BuildError, match=r"no \.deb files"):
        kubernetes.resolve(str(tmp_path))
    (tmp_path / "kubelet").write_text("#!/bin/sh\necho Kubernetes v1.31.2\n")
    src = kubernetes.resolve(str(tmp_path))
    assert src.kind == "dir" and src.directory == tmp_path.resolve()


def test_kubernetes_binaries_are_installed_with_their_version(tmp_path: Path) -> None:
    d, tree = tmp_path / "k8s", tmp_path / "tree"
    d.mkdir()
    (tree / "usr/bin").mkdir(parents=True)
    (d / "kubelet").write_text("#!/bin/sh\necho Kubernetes v1.31.2\n")
    (d / "kubelet").chmod(0o755)
    got = kubernetes.install(None, tree, kubernetes.resolve(str(d)), tmp_path)  # type: ignore[arg-type]
    assert got == {"kubelet": "v1.31.2"}
    assert (tree / "usr/bin/kubelet").stat().st_mode & 0o777 == 0o755


def test_auto_without_upstream_warns_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes, "_reachable", lambda url: "Name or service not known")
    src = kubernetes.resolve("auto")
    assert src.kind == "debian-source" and "unreachable" in src.reason and src.warnings
    assert "Debian's source package" in src.warnings[0] and "end-of-life" in src.warnings[0]
    with pytest.raises(BuildError, match="unreachable"):
        kubernetes.resolve("upstream")


def test_site_fingerprint_never_holds_secrets() -> None:
    text = sitefile.new_site_toml("demo")
    site = sitefile.parse_site(tomllib.loads(text))
    secrets = site.secrets
    fp = json.dumps(manifest.site_fingerprint(text, "demo", True, site.boot.certificate))
    assert secrets.ospf_key not in fp and secrets.bootstrap_token not in fp
    key_body = secrets.boot_key.splitlines()[1]
    assert key_body not in fp and text not in fp
    assert json.loads(fp)["boot_certificate"] == site.boot.certificate


def test_sha256sums_checks_with_sha256sum(tmp_path: Path) -> None:
    (tmp_path / "a.raw").write_bytes(b"disk")
    (tmp_path / "netboot").mkdir()
    (tmp_path / "netboot/x.efi").write_bytes(b"uki")
    manifest.write_sha256sums(tmp_path)
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "netboot/x.efi: OK" in r.stdout


def test_publish_replaces_the_old_output_only_at_the_end(tmp_path: Path) -> None:
    out, new = tmp_path / "out", tmp_path / ".out.x.partial"
    out.mkdir()
    (out / "old").write_text("old")
    new.mkdir()
    (new / "kubermesh.raw").write_text("new")
    build._publish(new, out)
    assert (out / "kubermesh.raw").read_text() == "new"
    assert not (out / "old").exists() and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_published_output_is_its_owners_only(tmp_path: Path) -> None:
    """The artifacts carry the site's secrets: out/ is 0700 whatever the umask made."""
    new = tmp_path / ".out.x.partial"
    new.mkdir(mode=0o755)
    new.chmod(0o755)
    build._publish(new, tmp_path / "out")
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700


def test_build_log_and_site_partition_are_private(tmp_path: Path) -> None:
    log = Log(tmp_path / "out.build.log")
    log.write("$ true")
    assert log.path.stat().st_mode & 0o777 == 0o600
    # The root holds no site, only a link to where the initrd puts it, in RAM.
    tree.link_site(tmp_path / "tree")
    link = tmp_path / "tree" / tree.SITE_PATH
    assert link.is_symlink() and str(link.readlink()) == tree.RUN_SITE
    # The stick's site partition: the TOML, NUL-padded to whole blocks, root only.
    blob = disk.site_blob("name = 'x'\n", tmp_path / "site.part")
    data = blob.read_bytes()
    assert blob.stat().st_mode & 0o777 == 0o600
    assert len(data) == disk.SITE_BLOCK and data.rstrip(b"\0") == b"name = 'x'\n"
    assert len(disk.site_blob("x" * disk.SITE_BLOCK, blob).read_bytes()) == 2 * disk.SITE_BLOCK
    with pytest.raises(ValueError, match="NUL"):
        disk.site_blob("a\0b", blob)


def test_source_built_pins_are_split_from_the_wheels() -> None:
    lock = "# pinned\nJinja2==3.1.6\nsystemd_python==235\npyroute2==0.9.7\n"
    binary, source = tree.split_lock(lock)
    assert source == ["systemd_python==235"]
    assert binary == "# pinned\nJinja2==3.1.6\npyroute2==0.9.7\n"
    root = Path(__file__).resolve().parents[2]
    _, pinned = tree.split_lock((root / "requirements.lock").read_text())
    assert pinned == ["systemd-python==235"]


def test_the_lab_is_not_installed_in_the_image(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The wheel holds the lab; the image's venv does not, and pip still lists kubermesh."""
    site_packages = tmp_path / tree.VENV.lstrip("/") / "lib/python3.11/site-packages"
    listed = [{"name": "kubermesh", "version": "0.1.0"}, {"name": "pyroute2", "version": "0.9.7"}]

    def fake_nspawn(log: object, t: Path, cmd: list[str], **kw: object) -> str:
        for package in ("kubermesh", "mesh", "firstboot", "image", "lab"):
            (site_packages / package).mkdir(parents=True)
            (site_packages / package / "__init__.py").write_text("")
        return "pip's chatter\n" + json.dumps(listed) + "\n"

    monkeypatch.setattr(tree, "nspawn", fake_nspawn)
    (tmp_path / "usr/bin").mkdir(parents=True)
    installed = tree.install_python(None, None, tmp_path, tmp_path / "wheels")  # type: ignore[arg-type]
    assert installed == {"kubermesh": "0.1.0", "pyroute2": "0.9.7"}
    assert sorted(p.name for p in site_packages.iterdir()) == [
        "firstboot", "image", "kubermesh", "mesh"]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 4097, 4098, 4099])
def test_the_appended_root_cpio_starts_on_a_4_byte_boundary(tmp_path: Path, size: int) -> None:
    """Whatever the initrd's size, the kernel finds the root archive's magic after it."""
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\x28\xb5\x2f\xfd" * (size // 4) + b"z" * (size % 4))
    (tmp_path / "root.squashfs").write_bytes(b"squash" * 100)
    (tmp_path / "root.verity").write_bytes(b"verity" * 10)
    root = VerityRoot(tmp_path / "root.squashfs", tmp_path / "root.verity", HASH)
    out = netboot.netboot_initrd(Log(tmp_path / "build.log"), tmp_path / "work", initrd, root,
                                 tmp_path / "initrd-netboot.img")
    data = out.read_bytes()
    start = -(-size // 4) * 4
    assert data[:size] == initrd.read_bytes() and data[size:start] == b"\0" * (start - size)
    assert data[start:start + 6] == b"070701"  # newc magic, where the kernel looks
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=data[start:], capture_output=True,
                             check=True).stdout.decode().split()
    assert sorted(listing) == ["kubermesh", "kubermesh/root.squashfs", "kubermesh/root.verity"]


def test_newc_entries_find_each_files_data(tmp_path: Path) -> None:
    d = tmp_path / "tree"
    (d / "kubermesh").mkdir(parents=True)
    (d / "kubermesh/root.squashfs").write_bytes(b"s" * 5)
    (d / "kubermesh/root.verity").write_bytes(b"v" * 3)
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=d, input=(
        b"kubermesh\nkubermesh/root.squashfs\nkubermesh/root.verity\n"), capture_output=True,
        check=True).stdout
    data = b"head" + archive
    entries = netboot.newc_entries(data, 4)
    off, size = entries["kubermesh/root.squashfs"]
    assert data[off:off + size] == b"s" * 5
    off, size = entries["kubermesh/root.verity"]
    assert data[off:off + size] == b"v" * 3


def test_prune_removes_what_a_mesh_pc_cannot_use(tmp_path: Path) -> None:
    kver = "6.1.0-test-amd64"
    t = tmp_path / "tree"
    mods = t / "usr/lib/modules" / kver / "kernel"
    keep = [mods / "drivers/net/ethernet/intel/e1000e/e1000e.ko", mods / "fs/ext4/ext4.ko",
            mods / "drivers/net/ethernet/stmicro/stmmac/stmmac.ko",
            mods / "drivers/video/fbdev/core/fb_ddc.ko", mods / "drivers/scsi/sd_mod.ko",
            t / "usr/lib/cni/bridge", t / "usr/lib/cni/host-local", t / "usr/lib/cni/loopback",
            t / "usr/lib/frr/ospf6d", t / "usr/bin/containerd", t / "usr/bin/python3.11"]
    drop = [mods / "sound/core/snd.ko", mods / "drivers/gpu/drm/amd/amdgpu/amdgpu.ko",
            mods / "lib/test_bpf.ko", mods / "arch/x86/kvm/kvm.ko", mods / "net/tipc/tipc.ko",
            mods / "drivers/net/ethernet/qlogic/qede/qede.ko", mods / "fs/hfsplus/hfsplus.ko",
            mods / "drivers/video/fbdev/matrox/matroxfb_base.ko", mods / "drivers/scsi/ipr.ko",
            t / "usr/lib/cni/macvlan", t / "usr/lib/cni/portmap", t / "usr/lib/frr/bgpd",
            t / "usr/bin/apt-get", t / "usr/lib/udev/hwdb.d/20-OUI.hwdb", t / "usr/bin/perl",
            t / "usr/bin/perl5.36.0", t / "usr/share/perl5/Debconf/Log.pm"]
    for f in keep + drop:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
    log = Log(tmp_path / "build.log")
    removed = tree.prune(log, t, kver)
    assert all(f.exists() for f in keep)
    assert not any(f.exists() for f in drop)
    assert removed["usr/lib/modules/6.1.0-test-amd64/kernel/sound"] == 100
    assert removed["usr/lib/udev/hwdb.d"] == 100 and removed["usr/bin/apt-get"] == 100
    # What no tree holds is named in the log.
    assert "nothing matches modules/drivers/media" in log.path.read_text()


def test_the_esp_is_as_big_as_its_uki_and_boots_from_the_removable_path(tmp_path: Path) -> None:
    """FAT16 sized to the UKI (a FAT32 file system is 32 MiB at least); the UKI reads
    back whole from EFI/BOOT/BOOTX64.EFI."""
    if not all(shutil.which(t) for t in ("mkfs.vfat", "mcopy", "mmd")):
        pytest.skip("dosfstools and mtools are not installed (./dev.sh build installs them)")
    uki = tmp_path / "kubermesh.efi"
    uki.write_bytes(os.urandom(3 << 20) + b"tail")
    log = Log(tmp_path / "build.log")
    out = disk.esp(log, uki, tmp_path / "esp.img")
    assert out.stat().st_size == disk.esp_mib(uki.stat().st_size) << 20 == 16 << 20
    assert disk.esp_mib(20_894_568) == 20 + 2  # today's UKI
    assert b"FAT16" in out.read_bytes()[54:62]  # the boot sector's file system type
    back = tmp_path / "back.efi"
    subprocess.run(["mcopy", "-i", str(out), disk.BOOT_PATH, str(back)], check=True)
    assert back.read_bytes() == uki.read_bytes()
