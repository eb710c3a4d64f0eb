"""Kubernetes built from Debian's own source package, with Debian's Go.

bookworm ships the `kubernetes` source package (1.20.2, the whole tree with its
vendor/ directory) but no kubelet or kubeadm binary packages. Built here with
bookworm's `golang-go`, it gives every binary a node and the control plane run,
where the upstream apt repository cannot be reached (offline labs, CI). 1.20 is
end-of-life: this is for those, not for a warehouse.

The source is fetched with apt from Debian's archive (signed Release, then the
three files checked against the sha256 pinned here), unpacked with dpkg-source,
one vendored module is swapped for Debian's newer one, and `make` builds the
binaries. The result is cached outside the checkout, keyed by the source's
sha256, the Go version, reflect2's version and this recipe: a second build
takes seconds.

The pause image (from the tree's pause.c) and a small workload image (Debian's
busybox-static) are packed with umoci and skopeo as docker archives, which the
node imports into containerd before its kubelet starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from image.errors import BuildError, say
from image.run import Log, run
from mesh.kubelet import PAUSE_IMAGE

PACKAGE = "kubernetes"
VERSION = "1.20.5+really1.20.2-1.1+deb12u1"  # bookworm's (the tree is upstream v1.20.2)
KUBERNETES = "v1.20.2"
# The source package's files as Debian's archive lists them (apt checks them
# against the signed Release too): a different source is a different build.
FILES = {
    f"kubernetes_{VERSION}.dsc":
        "19fa1da5aefcef673894ac9511986bd98a14410cf8eea0b626613c30df435257",
    "kubernetes_1.20.5+really1.20.2.orig.tar.gz":
        "b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc",
    f"kubernetes_{VERSION}.debian.tar.xz":
        "9b6e5fd41769d2b5badf2e73b274e3bcd90f85e13d06a1a4a845ccce018127d8",
}
ARCHIVE = "http://deb.debian.org/debian"
SUITE = "bookworm"
EOL = "1.20 is end-of-life: for offline labs and CI"
SOURCE = {"package": PACKAGE, "version": VERSION, "archive": ARCHIVE, "suite": SUITE,
          "sha256": FILES}

# What a node runs: the node's binaries and the control plane's (plain binaries,
# run as systemd units: no control-plane images).
COMPONENTS = ("kubelet", "kubeadm", "kubectl", "kube-proxy", "kube-apiserver",
              "kube-controller-manager", "kube-scheduler")
# providerless: no cloud providers (a third smaller, a third less CPU to build, and
# no kubelet probing a cloud's metadata address); kubelet static like the others.
MAKE_ENV = {"KUBE_STATIC_OVERRIDES": "kubelet", "GOFLAGS": "-tags=providerless"}
# Without Debian's reflect2 1.0.2 the binaries build but kubeadm, and anything that
# marshals a map to YAML, segfault in runtime.mapiternext under Go 1.18+.
REFLECT2 = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")
REFLECT2_PACKAGE = "golang-github-modern-go-reflect2-dev"
RECIPE = 1  # bump when what follows changes what the cache holds

# Container images built beside the binaries, by the names the node's containerd
# and kubelet use (mesh.kubelet.PAUSE_IMAGE, and tests' workloads).
BUSYBOX_IMAGE = "kubermesh.local/busybox:1.35"
IMAGES = {"pause.tar": PAUSE_IMAGE, "busybox.tar": BUSYBOX_IMAGE}
BUSYBOX_APPLETS = ("sh", "ping", "nslookup", "wget", "sleep", "httpd", "hostname", "ip",
                   "cat", "echo", "ls", "true")
PROGRESS_EVERY = 30.0
VERSION_ARGS = {"kubectl": ["version", "--client"], "kubeadm": ["version", "-o", "short"]}


@dataclass(frozen=True)
class Built:
    """A finished build in the cache: bin/ (COMPONENTS) and images/ (docker archives)."""

    directory: Path
    meta: dict[str, object]

    @property
    def binaries(self) -> Path:
        return self.directory / "bin"

    @property
    def images(self) -> Path:
        return self.directory / "images"


def go_version(log: Log) -> str:
    out = run(log, ["go", "version"], capture=True,
              hint="the host needs golang-go: ./dev.sh setup installs it")
    return out.split()[2] if len(out.split()) > 2 else out.strip()  # "go1.19.8"


def deb_version(log: Log, package: str) -> str:
    try:
        return run(log, ["dpkg-query", "-W", "-f", "${Version}", package], capture=True).strip()
    except BuildError:
        raise BuildError(f"{package} is not installed on the build host",
                         hint="./dev.sh setup installs the build host's packages") from None


def build(log: Log, cache: Path) -> Built:
    """The cached binaries for this source and toolchain, compiled first if missing."""
    go = go_version(log)
    reflect2 = deb_version(log, REFLECT2_PACKAGE)
    key = cache_key({"files": FILES, "go": go, "reflect2": reflect2, "make": MAKE_ENV,
                     "components": COMPONENTS, "recipe": RECIPE})

    def make(work: Path, out: Path) -> dict[str, object]:
        bins = _make(log, _fetch(log, work), work)
        (out / "bin").mkdir()
        for name in COMPONENTS:
            shutil.copy2(bins / name, out / "bin" / name)
        return {"version": KUBERNETES, "eol": EOL, "source": SOURCE, "go": go,
                "reflect2": reflect2, "make": MAKE_ENV, "components": list(COMPONENTS)}
    return _cached(cache / f"{KUBERNETES}-{key}", f"Kubernetes {KUBERNETES}", make)


def find_built(cache: Path) -> Built | None:
    """The newest finished build of this version in the cache, whatever toolchain made
    it (a lab runs its control plane from it), or None."""
    done = [d for d in cache.glob(f"{KUBERNETES}-*") if (d / "meta.json").is_file()
            and all((d / "bin" / c).is_file() for c in COMPONENTS)]
    if not done:
        return None
    d = max(done, key=lambda d: (d / "meta.json").stat().st_mtime)
    return Built(d, json.loads((d / "meta.json").read_text()))


def images(log: Log, cache: Path) -> Built:
    """The cached container images (pause from the source tree, busybox), made if missing."""
    busybox = deb_version(log, "busybox-static")
    key = cache_key({"files": FILES, "busybox": busybox, "images": IMAGES,
                     "applets": BUSYBOX_APPLETS, "recipe": RECIPE})

    def make(work: Path, out: Path) -> dict[str, object]:
        _images(log, _fetch(log, work, patch=False), work, out / "images")
        return {"images": IMAGES, "busybox": busybox, "source": SOURCE}
    return _cached(cache / f"images-{key}", "the pause and busybox images", make)


def cache_key(what: dict[str, object]) -> str:
    """What a cached build is made from, as a short hash (the whole is in its meta.json)."""
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _cached(done: Path, what: str,
            make: Callable[[Path, Path], dict[str, object]]) -> Built:
    if (done / "meta.json").is_file():
        say(f"  {what} from the cache ({done})")
        return Built(done, json.loads((done / "meta.json").read_text()))
    done.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(done.parent, 0o755)
    work = Path(tempfile.mkdtemp(prefix=f".{done.name}.", suffix=".partial", dir=done.parent))
    try:
        out = work / "out"
        out.mkdir()
        meta = {**make(work, out), "key": done.name}
        (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.chmod(out, 0o755)
        out.rename(done)  # the cache holds only finished builds
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Built(done, meta)


def _fetch(log: Log, work: Path, patch: bool = True) -> Path:
    """apt-get source, from a sources list of its own (the host needs no deb-src);
    with patch, Debian's reflect2 in place of the vendored one."""
    apt = work / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "lists/partial").mkdir(parents=True)
    (apt / "sources.list.d/kubermesh-src.sources").write_text(
        f"Types: deb-src\nURIs: {ARCHIVE}\nSuites: {SUITE}\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    opts = ["-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={apt / 'sources.list.d'}",
            "-o", f"Dir::State::Lists={apt / 'lists'}",
            "-o", "APT::Sandbox::User=root"]
    hint = f"the build host must reach {ARCHIVE} (or use --kubernetes none)"
    run(log, ["apt-get", *opts, "-q", "update"], hint=hint)
    dl = work / "dl"
    dl.mkdir()
    run(log, ["apt-get", *opts, "-q", "source", "--download-only", f"{PACKAGE}={VERSION}"],
        cwd=dl, hint=hint)
    for name, want in FILES.items():
        f = dl / name
        got = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "missing"
        if got != want:
            raise BuildError(f"the source package's {name}: sha256 {got}, pinned {want}",
                             hint="the archive changed the package: check it, then update "
                                  "image/kubesource.py FILES")
    source = work / "src"
    run(log, ["dpkg-source", "--no-check", "-x", dl / f"kubernetes_{VERSION}.dsc", source])
    if not patch:
        return source
    # Debian's reflect2 for the vendored one (its .go and .s files, not its tests).
    vendored = source / "vendor/github.com/modern-go/reflect2"
    if not REFLECT2.is_dir():
        raise BuildError(f"{REFLECT2} is missing", hint=f"install {REFLECT2_PACKAGE}")
    shutil.rmtree(vendored)
    vendored.mkdir()
    for f in sorted(REFLECT2.iterdir()):
        if f.suffix in (".go", ".s") and not f.name.endswith("_test.go"):
            shutil.copy2(f, vendored / f.name)
    return source


@contextmanager
def _progress(what: str, watch: Path, log: Log) -> Iterator[None]:
    """A line every PROGRESS_EVERY seconds while a long command runs."""
    stop = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not stop.wait(PROGRESS_EVERY):
            size = sum(f.stat().st_size for f in watch.rglob("*") if f.is_file()) >> 20 \
                if watch.is_dir() else 0
            last = [ln for ln in log.tail(40).splitlines() if ln.startswith("+++")]
            say(f"    … {what}: {time.monotonic() - start:.0f} s, {size} MiB compiled"
                + (f" ({last[-1][:100]})" if last else ""))

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def _make(log: Log, source: Path, work: Path) -> Path:
    env = {**MAKE_ENV, "GOCACHE": str(work / "gocache"), "GOPATH": str(work / "gopath"),
           "GOTOOLCHAIN": "local", "HOME": str(work)}
    what = " ".join(f"cmd/{c}" for c in COMPONENTS)
    say(f"  compiling Kubernetes {KUBERNETES} ({', '.join(COMPONENTS)}) with "
        f"{go_version(log)}: about 7 minutes on 2 idle cores, more when busy")
    with _progress("compiling", source / "_output", log):  # where kube's make builds
        run(log, ["make", f"WHAT={what}"], cwd=source, env=env)
    bins = source / "_output/local/go/bin"
    missing = [c for c in COMPONENTS if not (bins / c).is_file()]
    if missing:
        raise BuildError(f"make finished but built no {', '.join(missing)}",
                         hint=f"the whole output is in {log.path}")
    for c in COMPONENTS:  # what they say they are
        out = _says(bins, c, VERSION_ARGS.get(c, ["--version"]))
        if KUBERNETES not in out:
            raise BuildError(f"the built {c} reports {out.strip()[:200]!r}, not {KUBERNETES}")
    # What the reflect2 swap is for: without it, this dies in runtime.mapiternext.
    if "InitConfiguration" not in _says(bins, "kubeadm", ["config", "print", "init-defaults"]):
        raise BuildError("the built kubeadm cannot print its defaults (the reflect2 swap?)",
                         hint=f"the whole output is in {log.path}")
    return bins


def _says(bins: Path, name: str, args: list[str]) -> str:
    r = subprocess.run([bins / name, *args], capture_output=True, text=True, timeout=60,
                       check=False)
    return r.stdout + r.stderr


def _image(log: Log, work: Path, name: str, files: dict[str, Path], links: dict[str, str],
           entrypoint: list[str], out: Path) -> None:
    """A one-layer image with files (path in the image -> host file) and symlinks,
    as a docker archive at out naming the image `name`."""
    layout = work / f"oci-{out.stem}"
    bundle = work / f"bundle-{out.stem}"
    ref = f"{layout}:latest"
    run(log, ["umoci", "init", "--layout", layout])
    run(log, ["umoci", "new", "--image", ref])
    run(log, ["umoci", "unpack", "--image", ref, bundle])
    rootfs = bundle / "rootfs"
    for dst, src in files.items():
        target = rootfs / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        target.chmod(0o755)
    for dst, to in links.items():
        target = rootfs / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(to)
    run(log, ["umoci", "repack", "--image", ref, bundle])
    config = ["umoci", "config", "--image", ref, "--os", "linux", "--architecture", "amd64"]
    config += [f"--config.entrypoint={e}" for e in entrypoint]
    run(log, config)
    run(log, ["skopeo", "copy", "--quiet", f"oci:{ref}", f"docker-archive:{out}:{name}"])


def _images(log: Log, source: Path, work: Path, images: Path) -> None:
    images.mkdir()
    pause = work / "pause"
    # pause.c's own build flags (build/pause/Makefile), the version its tag.
    run(log, ["gcc", "-Os", "-Wall", "-Werror", "-static",
              f"-DVERSION=v{PAUSE_IMAGE.rsplit(':', 1)[1]}-kubermesh", "-o", pause,
              source / "build/pause/linux/pause.c"])
    run(log, ["strip", pause])
    _image(log, work, PAUSE_IMAGE, {"/pause": pause}, {}, ["/pause"],
           images / "pause.tar")
    busybox = Path("/bin/busybox")
    _image(log, work, BUSYBOX_IMAGE, {"/bin/busybox": busybox},
           {f"/bin/{a}": "busybox" for a in BUSYBOX_APPLETS}, ["/bin/sh"],
           images / "busybox.tar")
