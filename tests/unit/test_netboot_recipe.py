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
