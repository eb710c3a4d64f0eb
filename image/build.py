"""`kubermesh build`: every step from mkosi to a bootable disk, shown and timed.

The build happens in a directory beside the output and moves into place only
when every step has succeeded: a failed build leaves no output that looks
finished, only its log.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from firstboot.files import write_atomic
from image import disk, initrd, kubernetes, manifest, netboot, root, sign, tree, uki
from image import site as sitefile
from image.errors import BuildError, say, step
from image.kubernetes import CACHE as KUBERNETES_CACHE
from image.run import Log
from mesh.site import Site

T = TypeVar("T")

RAW = "kubermesh.raw"
UKI = "kubermesh.efi"
NETBOOT_UKI = "netboot/kubermesh-netboot.efi"


@dataclass(frozen=True)
class Options:
    output: Path
    site: Path | None = None
    kubernetes: str = "auto"
    cache: Path = Path("mkosi.cache")
    kubernetes_cache: Path = KUBERNETES_CACHE  # (the field above hides the module here)


def _timed(title: str, fn: Callable[[], T], times: dict[str, float]) -> T:
    import time

    start = time.monotonic()
    with step(title):
        result = fn()
    times[title] = round(time.monotonic() - start, 1)
    return result


def _version(src: tree.Sources) -> str:
    with (src.root / "pyproject.toml").open("rb") as f:
        base = str(tomllib.load(f)["project"]["version"])
    try:
        rev = subprocess.run(["git", "-C", str(src.root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = ""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    return f"{base}+{stamp}" + (f".g{rev}" if rev else "")


def build(opts: Options) -> Path:
    # The site first: a bad one is refused before anything is checked or built.
    site_text, site, generated = sitefile.load(opts.site)
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (mkosi, systemd-nspawn)",
                         hint="run it with sudo, or ./dev.sh build")
    src = tree.Sources.find()
    out = opts.output.resolve()
    cache = opts.cache.resolve() if opts.cache.is_absolute() else (src.root / opts.cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Log(out.parent / f"{out.name}.build.log")
    say(f"building into {out} (log: {log.path})")
    k8s = kubernetes.resolve(opts.kubernetes)
    kubernetes.warn(k8s)

    version = _version(src)
    # The work directory (mkdtemp: 0700) and the output in it are their owner's
    # only: the artifacts carry the site's secrets (see _publish).
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        result = _build(log, src, work, cache, version, site_text, site, generated, k8s,
                        opts.kubernetes_cache)
        _publish(result, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kubernetes.warn(k8s)
    say(f"image {version} is in {out}")
    return out


def _build(log: Log, src: tree.Sources, work: Path, cache: Path, version: str, site_text: str,
           site: Site, generated: bool, k8s: kubernetes.Source, k8s_cache: Path) -> Path:
    times: dict[str, float] = {}
    t = work / "tree"
    dist = work / "output"
    dist.mkdir(mode=0o700)
    (dist / "netboot").mkdir(mode=0o700)

    _timed("Building the Debian tree with mkosi",
           lambda: tree.mkosi(log, src, t, cache / "mkosi", version), times)
    wheels = work / "wheels"
    _timed("Fetching the pinned Python wheels",
           lambda: tree.fetch_wheels(log, src, wheels, cache), times)
    python = _timed("Installing kubermesh and its pinned dependencies",
                    lambda: tree.install_python(log, src, t, wheels), times)
    components = _timed(f"Installing Kubernetes ({k8s.kind})",
                        lambda: kubernetes.install(log, t, k8s, cache / "mkosi", k8s_cache),
                        times)
    images = _timed("Installing the pause and busybox images",
                    lambda: kubernetes.install_images(log, t, k8s, k8s_cache), times)
    units = _timed("Installing units and presets", lambda: tree.install_units(log, src, t), times)
    tree.tune_frr(t)
    tree.link_site(t)
    tree.write_os_release(t, version)
    kver, vmlinuz = tree.kernel(t)
    pruned = _timed("Leaving out what a mesh PC cannot use (sound, radios, GPUs, ...)",
                    lambda: {**tree.trim_hwdb(log, t), **tree.prune(log, t, kver)}, times)
    tree.depmod(log, t, kver)
    initrd_img = _timed(f"Building the initrd (dracut, kernel {kver})",
                        lambda: initrd.dracut(log, t, kver), times)
    packages = tree.debian_packages(log, t)
    _timed("Making the root immutable (/var, /etc, /root, SSH keys)",
           lambda: tree.make_immutable(log, t), times)
    top = tree.largest(t)
    squashfs = _timed("Compressing the root (squashfs, zstd)",
                      lambda: root.squashfs(log, t, work / "root.squashfs"), times)
    vroot = _timed("Computing the dm-verity hash tree",
                   lambda: root.verity(log, squashfs, work / "root.verity"), times)
    os_release = t / "usr/lib/os-release"
    efi = _timed("Building the UKI", lambda: uki.build_uki(
        log, work, dist / UKI, os_release=os_release, cmdline=uki.disk_cmdline(vroot),
        kernel=vmlinuz, initrd=initrd_img), times)
    _timed("Signing the UKI with the site's boot key (sbsign)",
           lambda: sign.sign(log, work, site, efi), times)
    esp = _timed("Building the ESP", lambda: disk.esp(log, efi, work / "esp.img"), times)

    nb_initrd = work / "initrd-netboot.img"

    def netboot_uki() -> Path:
        netboot.netboot_initrd(log, work, initrd_img, vroot, nb_initrd)
        made = uki.build_uki(log, work, dist / NETBOOT_UKI, os_release=os_release,
                             cmdline=netboot.netboot_cmdline(vroot), kernel=vmlinuz,
                             initrd=nb_initrd)
        return sign.sign(log, work, site, made)
    nb = _timed("Building and signing the netboot UKI (root inside)", netboot_uki, times)
    for artifact in (efi, nb):
        sign.verify(log, work, site, artifact)
    recipe = _timed("Writing the netboot recipe (what a node serves, from its own disk)",
                    lambda: netboot.make_recipe(log, nb, initrd_img, nb_initrd, efi, esp, vroot),
                    times)
    recipe_part = disk.recipe_blob(recipe, work / "netboot.part")

    site_part = disk.site_blob(site_text, work / "site.part")
    raw = _timed("Laying out the GPT disk (systemd-repart)",
                 lambda: disk.gpt_disk(log, work, esp, vroot, site_part, recipe_part,
                                       dist / RAW), times)
    os.chmod(raw, 0o600)  # the stick's site partition holds the site's secrets

    def finish() -> None:
        sizes = {
            "raw": raw.stat().st_size, "uki": efi.stat().st_size,
            "netboot_uki": nb.stat().st_size, "esp": esp.stat().st_size,
            "netboot_recipe": recipe_part.stat().st_size,
            "root_squashfs": squashfs.stat().st_size, "root_verity": vroot.verity.stat().st_size,
            "kernel": vmlinuz.stat().st_size, "initrd": initrd_img.stat().st_size,
            "tree_largest_dirs": top,
            "pruned_from_tree": sum(pruned.values()),
        }
        m: dict[str, Any] = {
            "image": "kubermesh", "version": version,
            "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "distribution": "debian bookworm", "kernel": kver,
            "root_hash": vroot.root_hash,
            "partitions": {"root": str(vroot.data_uuid), "root_verity": str(vroot.hash_uuid)},
            "cmdline": {"disk": uki.disk_cmdline(vroot),
                        "netboot": netboot.netboot_cmdline(vroot)},
            "kubernetes": {"source": k8s.kind, "components": components or "none",
                           **({"why_none": k8s.reason} if not components else {}),
                           **kubernetes.details(k8s), "images": images,
                           "warnings": list(k8s.warnings)},
            "site": manifest.site_fingerprint(site_text, site.name, generated,
                                              site.boot.certificate),
            "units": units,
            "pruned": sorted(pruned),
            "sizes": sizes, "step_seconds": times,
            "packages": {"debian": packages, "python": python},
            "artifacts": {"disk": RAW, "uki": UKI, "netboot_uki": NETBOOT_UKI},
        }
        manifest.write_manifest(dist / "manifest.json", m)
        if generated:
            write_atomic(dist / "demo-site.toml", site_text, 0o600)
        manifest.write_sha256sums(dist)
    _timed("Writing manifest.json and SHA256SUMS", finish, times)
    return dist


def _publish(dist: Path, out: Path) -> None:
    """Swap the finished build into place; an older output is replaced only now.

    The output is its owner's only (0700): every artifact holds the site's secrets.
    """
    os.chmod(dist, 0o700)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.rename(out, old)
    os.rename(dist, out)
    shutil.rmtree(old, ignore_errors=True)
