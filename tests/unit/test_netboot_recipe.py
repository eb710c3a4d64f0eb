"""The netboot recipe: the served UKI rebuilt byte for byte from a few KiB of its
own and the partitions a node already has."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from firstboot.netboot import Recipe, RecipeError, Segment, assemble, decode, encode, self_contained


def _sources(tmp_path: Path) -> tuple[bytes, dict[str, Path]]:
    esp = b"E" * 100 + b"KERNEL" * 50 + b"e" * 10
    root = b"R" * 5000 + b"padding of the partition"
    verity = b"V" * 700
    paths = {}
    for name, data in (("esp", esp), ("root", root), ("verity", verity)):
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    whole = b"MZhead" + b"KERNEL" * 50 + b"cpio" + b"R" * 5000 + b"pad" + b"V" * 700 + b"sig"
    return whole, paths


def _recipe(whole: bytes) -> Recipe:
    segments = (Segment("literal", 0, 6), Segment("esp", 100, 300), Segment("literal", 6, 4),
                Segment("root", 0, 5000), Segment("literal", 10, 3), Segment("verity", 0, 700),
                Segment("literal", 13, 3))
    return Recipe(len(whole), hashlib.sha256(whole).hexdigest(), segments,
                  b"MZhead" + b"cpio" + b"pad" + b"sig")


def test_a_recipe_rebuilds_the_file_and_survives_its_encoding(tmp_path: Path) -> None:
    whole, sources = _sources(tmp_path)
    recipe = decode(encode(_recipe(whole)) + b"\0" * 4096)  # as read from its partition
    out = io.BytesIO()
    assert assemble(recipe, sources, out.write) == recipe.sha256
    assert out.getvalue() == whole
    # A neighbour without an ESP serves the same bytes from a self-contained recipe.
    inline = self_contained(recipe, sources)
    assert inline.kinds() == {"literal", "root", "verity"}
    out = io.BytesIO()
    assemble(decode(encode(inline)), {"root": sources["root"], "verity": sources["verity"]},
             out.write)
    assert out.getvalue() == whole


def test_bad_recipes_and_missing_sources_are_refused(tmp_path: Path) -> None:
    whole, sources = _sources(tmp_path)
    data = encode(_recipe(whole))
    with pytest.raises(RecipeError, match="bad magic"):
        decode(b"X" + data[1:])
    with pytest.raises(RecipeError, match="truncated"):
        decode(data[:-2])
    with pytest.raises(RecipeError, match="no source for esp"):
        assemble(_recipe(whole), {"root": sources["root"], "verity": sources["verity"]},
                 lambda _: None)
    sources["verity"].write_bytes(b"V" * 10)  # a short partition
    with pytest.raises(RecipeError, match="ended 690 bytes early"):
        assemble(_recipe(whole), sources, lambda _: None)
    bad = Recipe(1, "", (Segment("disk", 0, 1),), b"")
    with pytest.raises(RecipeError, match="unknown"):
        decode(encode(bad))


def test_a_node_finds_what_it_serves(tmp_path: Path) -> None:
    """From the kernel command line: a disk node's partitions (the recipe and the ESP
    beside its root), a netbooted node's loop devices and the recipe it was given."""
    from firstboot.paths import NodePaths
    from firstboot.provision import netboot_sources

    whole, _ = _sources(tmp_path)
    big = Recipe(len(whole), "", (Segment("literal", 0, len(whole)),), whole)
    paths = NodePaths(cmdline=tmp_path / "cmdline", sysfs=tmp_path / "sys",
                      dev=tmp_path / "dev", run_dir=tmp_path / "run")
    paths.cmdline.write_text("roothash=ab systemd.verity_root_data=/dev/loop0 "
                             "systemd.verity_root_hash=/dev/loop1 kubermesh.netroot=1\n")
    assert "no recipe" in str(netboot_sources(paths))
    paths.run_dir.mkdir()
    # A self-contained recipe holds the kernel and initrd: tens of MiB.
    large = Recipe(20 << 20, "", (Segment("literal", 0, 20 << 20),), b"k" * (20 << 20))
    paths.netboot_recipe.write_bytes(encode(large))
    found = netboot_sources(paths)
    assert not isinstance(found, str), found
    assert found[1] == {"root": Path("/dev/loop0"), "verity": Path("/dev/loop1")}
    # A disk node: vda2 is the root; vda1 the ESP, vda5 the recipe, by GPT name.
    paths.cmdline.write_text("systemd.verity_root_data=PARTUUID=AB-CD "
                             "systemd.verity_root_hash=PARTUUID=EF\n")
    disk = tmp_path / "sys/devices/pci/virtio/block/vda"
    for i, name in ((1, "ESP"), (2, "kubermesh-root"), (5, "kubermesh-netboot")):
        (disk / f"vda{i}").mkdir(parents=True)
        (disk / f"vda{i}/partition").write_text(f"{i}\n")
        (disk / f"vda{i}/uevent").write_text(f"DEVNAME=vda{i}\nPARTNAME={name}\n")
        (paths.dev / f"vda{i}").parent.mkdir(exist_ok=True)
        (paths.dev / f"vda{i}").write_bytes(encode(big) if name == "kubermesh-netboot" else b"")
    (tmp_path / "sys/class/block").mkdir(parents=True)
    (tmp_path / "sys/class/block/vda2").symlink_to(disk / "vda2")
    (paths.dev / "disk/by-partuuid").mkdir(parents=True)
    (paths.dev / "disk/by-partuuid/ab-cd").symlink_to(paths.dev / "vda2")
    found = netboot_sources(paths)
    assert not isinstance(found, str), found
    recipe, sources = found
    assert recipe.size == len(whole)
    assert sources["esp"] == paths.dev / "vda1"
    assert sources["root"] == paths.dev / "disk/by-partuuid/ab-cd"
