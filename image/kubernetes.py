"""Kubernetes binaries: from the upstream apt repository, Debian's own source
package (built here: image/kubesource.py), a local directory, or none.

Debian bookworm has no kubelet or kubeadm packages, so they come from a source
named at build time. `auto` takes upstream where reachable, else builds 1.20
from Debian's source, and says so loudly; an image built without Kubernetes
says so too, in the build output and in its manifest. Every kind but `none`
also ships the pause and busybox images (no registry needed).
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from image import kubesource
from image.errors import BuildError, say
from image.run import Log, nspawn, run

MINOR = "v1.31"  # the pinned Kubernetes minor release
REPO = f"https://pkgs.k8s.io/core:/stable:/{MINOR}/deb/"
KEY = REPO + "Release.key"
PACKAGES = ("kubelet", "kubeadm", "kubectl")
BINARIES = ("kubelet", "kubeadm", "kubectl", "crictl")
PROBE_TIMEOUT = 10.0
CACHE = Path("/var/cache/kubermesh/kubernetes")  # outside any checkout: kept across clones
IMAGES_DIR = "usr/lib/kubermesh/images"  # in the tree; kubermesh-images.service imports them


@dataclass(frozen=True)
class Source:
    """Where this build takes Kubernetes from: upstream, dir, or none (with why)."""

    kind: str
    directory: Path | None = None
    reason: str = ""
    warnings: tuple[str, ...] = field(default=())


def _reachable(url: str) -> str:
    """'' when url answers, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as r:
            r.read(1)
        return ""
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        return str(getattr(e, "reason", e))


def resolve(spec: str) -> Source:
    """Turn --kubernetes auto|upstream|debian-source|none|DIR into a source, probing
    upstream if needed."""
    if spec == "none":
        return Source("none", reason="built with --kubernetes none")
    if spec == "debian-source":
        return Source("debian-source")
    if spec in ("auto", "upstream"):
        why = _reachable(REPO + "InRelease")
        if not why:
            return Source("upstream")
        if spec == "upstream":
            raise BuildError(f"the Kubernetes apt repository {REPO} is unreachable ({why})",
                             hint="use --kubernetes debian-source (1.20, built here), "
                                  "--kubernetes DIR with kubelet/kubeadm .debs or binaries, "
                                  "or --kubernetes none")
        reason = (f"--kubernetes auto: the Kubernetes apt repository {REPO} is unreachable "
                  f"from the build host ({why}): building Kubernetes {kubesource.KUBERNETES} "
                  f"from Debian's source package instead ({kubesource.EOL})")
        return Source("debian-source", reason=reason, warnings=(reason,))
    d = Path(spec)
    if not d.is_dir():
        raise BuildError(f"--kubernetes {spec}: not auto, upstream, debian-source, none "
                         "or a directory")
    debs = sorted(d.glob("*.deb"))
    bins = [b for b in BINARIES if (d / b).is_file()]
    if not debs and not bins:
        raise BuildError(f"--kubernetes {spec}: the directory has no .deb files and none of "
                         f"{', '.join(BINARIES)}")
    return Source("dir", directory=d.resolve())


def install(log: Log, tree: Path, src: Source, apt_cache: Path,
            cache: Path = CACHE) -> dict[str, str]:
    """Install the source's components into the tree; returns component → version."""
    if src.kind == "none":
        return {}
    if src.kind == "upstream":
        return _install_upstream(log, tree, apt_cache)
    if src.kind == "debian-source":
        built = kubesource.build(log, cache)
        for f in sorted(built.binaries.iterdir()):
            shutil.copy2(f, tree / "usr/bin" / f.name)
            (tree / "usr/bin" / f.name).chmod(0o755)
        return {c: kubesource.KUBERNETES for c in kubesource.COMPONENTS}
    assert src.directory is not None
    debs = sorted(src.directory.glob("*.deb"))
    if debs:
        nspawn(log, tree, ["/bin/sh", "-c",
                           "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install "
                           "-y -qq --no-install-recommends /run/kubermesh-kubernetes/*.deb"],
               binds={src.directory: "/run/kubermesh-kubernetes"},
               rw_binds={apt_cache: "/var/cache/apt/archives"})
        return {_deb_field(log, d, "Package"): _deb_field(log, d, "Version") for d in debs}
    components = {}
    for b in BINARIES:
        f = src.directory / b
        if f.is_file():
            shutil.copy2(f, tree / "usr/bin" / b)
            (tree / "usr/bin" / b).chmod(0o755)
            components[b] = _binary_version(tree, b)
    return components


def _deb_field(log: Log, deb: Path, name: str) -> str:
    return run(log, ["dpkg-deb", "-f", deb, name], capture=True).strip()


def _binary_version(tree: Path, name: str) -> str:
    # `kubelet --version` prints "Kubernetes v1.31.2"; anything else is reported as is.
    try:
        out = subprocess.run([tree / "usr/bin" / name, "--version"], capture_output=True,
                             text=True, timeout=30, check=False).stdout.strip()
    except OSError:
        out = ""
    return out.split()[-1] if out else "unknown"


def _install_upstream(log: Log, tree: Path, apt_cache: Path) -> dict[str, str]:
    keyrings = tree / "etc/apt/keyrings"
    keyrings.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(KEY, timeout=PROBE_TIMEOUT * 3) as r:
            (keyrings / "kubernetes.asc").write_bytes(r.read())
    except (urllib.error.URLError, OSError) as e:
        raise BuildError(f"cannot fetch the Kubernetes repository key {KEY}: {e}") from None
    (tree / "etc/apt/sources.list.d/kubernetes.list").write_text(
        f"deb [signed-by=/etc/apt/keyrings/kubernetes.asc] {REPO} /\n")
    nspawn(log, tree, ["/bin/sh", "-c",
                       "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install "
                       f"-y -qq --no-install-recommends {' '.join(PACKAGES)}"],
           rw_binds={apt_cache: "/var/cache/apt/archives"})
    out = nspawn(log, tree, ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *PACKAGES],
                 capture=True)
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def install_images(log: Log, tree: Path, src: Source, cache: Path = CACHE) -> dict[str, str]:
    """The pause and busybox images into the tree (every source but none); returns
    file → image name."""
    if src.kind == "none":
        return {}
    try:
        built = kubesource.images(log, cache)
    except BuildError as e:
        if src.kind == "debian-source":
            raise
        say(f"  !!! WARNING: no pause or busybox image in this image ({e.message}): "
            f"no pod starts until {kubesource.IMAGES['pause.tar']} is imported into "
            "containerd !!!")
        return {}
    target = tree / IMAGES_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in kubesource.IMAGES:
        shutil.copy2(built.images / name, target / name)
        (target / name).chmod(0o644)
    return dict(kubesource.IMAGES)


def details(src: Source) -> dict[str, object]:
    """What the manifest says of the source beyond its components."""
    if src.kind != "debian-source":
        return {}
    return {"version": kubesource.KUBERNETES, "note": kubesource.EOL,
            "debian_source": kubesource.SOURCE, "make": kubesource.MAKE_ENV}


def warn(src: Source) -> None:
    for w in src.warnings:
        say("")
        if src.kind == "none":
            say("  !!! WARNING: this image has NO Kubernetes node binaries !!!")
        else:
            say(f"  !!! WARNING: Kubernetes {kubesource.KUBERNETES} from Debian's source: "
                "end-of-life, for offline labs and CI only !!!")
        say(f"  !!! {w}")
        say("")
