"""The built artifacts, without booting them: every UKI is signed with the site's
boot key, and nothing a node serves to its neighbours (the netboot UKI, the UKI,
the root inside them) holds a site secret; only the USB disk image does, on its
site partition."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.conftest import Image

pytestmark = pytest.mark.vm

NEWC_ROOT = re.compile(rb"070701[0-9A-Fa-f]{104}kubermesh\x00")  # the root's cpio, appended


def _ukis(image: Image) -> list[Path]:
    a = image.manifest["artifacts"]
    return [image.dir / a["uki"], image.dir / a["netboot_uki"]]


def test_every_uki_is_signed_by_the_site(image: Image, tmp_path: Path) -> None:
    cert = tmp_path / "boot.crt"
    cert.write_text(image.manifest["site"]["boot_certificate"])
    for efi in _ukis(image):
        r = subprocess.run(["sbverify", "--cert", cert, efi], capture_output=True, text=True,
                           check=False)
        assert r.returncode == 0, f"{efi.name}: {r.stdout}{r.stderr}"
    # A byte changed in the signed image (here in its command line: the root hash)
    # breaks the signature: firmware with the certificate enrolled refuses it.
    tampered = tmp_path / "tampered.efi"
    data = bytearray(_ukis(image)[1].read_bytes())
    at = data.index(b"roothash=") + len(b"roothash=")
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    tampered.write_bytes(data)
    r = subprocess.run(["sbverify", "--cert", cert, tampered], capture_output=True, text=True,
                       check=False)
    assert r.returncode != 0, "a tampered UKI still verified"


def _secrets(image: Image) -> dict[str, bytes]:
    demo = image.dir / "demo-site.toml"
    if not demo.is_file():
        pytest.skip(f"no {demo.name} in {image.dir}: the image was built with --site, whose "
                    "secrets this test cannot know (build without --site to run it)")
    s = tomllib.loads(demo.read_text())["secrets"]
    key_lines = s["boot_key"].strip().splitlines()[1:-1]
    return {"ospf_key": s["ospf_key"].encode(), "bootstrap_token": s["bootstrap_token"].encode(),
            **{f"boot_key line {i}": line.encode() for i, line in enumerate(key_lines[:3])}}


def _files(d: Path) -> Iterator[Path]:
    return (p for p in d.rglob("*") if p.is_file() and not p.is_symlink())


def _found(blob: bytes, secrets: dict[str, bytes]) -> list[str]:
    return [name for name, value in secrets.items() if value in blob]


def test_no_site_secret_in_what_a_node_serves(image: Image, tmp_path: Path) -> None:
    secrets = _secrets(image)
    # The search finds them where they are: the USB disk image's site partition.
    raw = image.raw.read_bytes()
    assert _found(raw, secrets) == list(secrets), "the disk image lacks its site"
    assert image.raw.stat().st_mode & 0o077 == 0, "the disk image holds secrets: owner only"
    del raw
    leaks: list[str] = []
    for efi in _ukis(image):
        leaks += [f"{efi.name}: {n}" for n in _found(efi.read_bytes(), secrets)]
        initrd = tmp_path / f"{efi.stem}.initrd"
        subprocess.run(["objcopy", "-O", "binary", "--only-section=.initrd", efi, initrd],
                       check=True)
        data = initrd.read_bytes()
        m = NEWC_ROOT.search(data)
        dracut, appended = (data[:m.start()], data[m.start():]) if m else (data, b"")
        # dracut's initrd is zstd: search what it unpacks to. zstd complains about
        # the padding after its frame (and exits 1) once it has written it all.
        unpacked = subprocess.run(["zstd", "-dc"], input=dracut, capture_output=True,
                                  check=False).stdout
        assert b"TRAILER!!!" in unpacked[-512:], f"{efi.name}: the initrd did not unpack"
        leaks += [f"{efi.name} initrd: {n}" for n in _found(unpacked, secrets)]
        if not appended:
            continue
        # The netboot root: unpack the cpio, then every file of the squashfs.
        nb = tmp_path / "netroot"
        nb.mkdir()
        subprocess.run(["cpio", "-id", "--quiet"], input=appended, cwd=nb, check=True)
        root = tmp_path / "root"
        subprocess.run(["unsquashfs", "-q", "-no-progress", "-d", root,
                        nb / "kubermesh/root.squashfs"], check=True, capture_output=True)
        files = list(_files(root))
        assert len(files) > 1000, f"only {len(files)} files unpacked from the root"
        for f in files:
            leaks += [f"{efi.name} root /{f.relative_to(root)}: {n}"
                      for n in _found(f.read_bytes(), secrets)]
        assert (root / "etc/kubermesh/site.toml").is_symlink()
    assert not leaks, "site secrets in served artifacts:\n" + "\n".join(leaks)


def test_the_disk_rebuilds_the_netboot_uki_byte_for_byte(image: Image, tmp_path: Path) -> None:
    """What a disk node serves its neighbours is assembled from its own partitions
    (ESP, root, verity) and the recipe partition: the image's signed netboot UKI."""
    from firstboot import netboot

    table = json.loads(subprocess.run(["sfdisk", "--json", image.raw], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    sector = table.get("sectorsize", 512)
    parts = {p.get("name", ""): (p["start"] * sector, p["size"] * sector)
             for p in table["partitions"]}
    assert {"ESP", "kubermesh-root", "kubermesh-root-verity", "kubermesh-netboot"} <= set(parts)

    def extract(name: str) -> Path:
        start, size = parts[name]
        out = tmp_path / name
        with image.raw.open("rb") as src, out.open("wb") as dst:
            src.seek(start)
            dst.write(src.read(size))
        return out

    recipe = netboot.decode(extract("kubermesh-netboot").read_bytes())
    assert len(recipe.literal) < 1 << 20, "the recipe repeats what the partitions hold"
    sources = {"esp": extract("ESP"), "root": extract("kubermesh-root"),
               "verity": extract("kubermesh-root-verity")}
    served = tmp_path / "served.efi"
    with served.open("wb") as f:
        digest = netboot.assemble(recipe, sources, f.write)
    nb = image.dir / image.manifest["artifacts"]["netboot_uki"]
    assert digest == recipe.sha256 == hashlib.sha256(nb.read_bytes()).hexdigest()
