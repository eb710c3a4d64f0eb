"""The netboot UKI a node serves, assembled from what the node already holds.

The served file is the image's signed netboot UKI, byte for byte, but no node
stores it: a small recipe (built with the image, kept on the disk's
kubermesh-netboot partition) lists its segments, and all but a few kilobytes of
them are bytes the node has anyway: the kernel and initrd inside its own UKI on
the ESP, and its root and verity partitions. A node that was itself netbooted
has its root and verity on loop devices, and holds a self-contained recipe (the
ESP's parts inline) that it fetched from the neighbour that booted it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"KMNBOOT1"
KINDS = ("literal", "esp", "root", "verity")
CHUNK = 1 << 20


class RecipeError(Exception):
    """A recipe that is malformed, or sources that do not yield the recipe's file."""


@dataclass(frozen=True)
class Segment:
    kind: str  # "literal": bytes of the recipe; else a partition's ("esp", "root", "verity")
    offset: int  # in the recipe's literal bytes, or in that partition
    length: int


@dataclass(frozen=True)
class Recipe:
    size: int  # of the assembled file
    sha256: str  # of the assembled file
    segments: tuple[Segment, ...]
    literal: bytes

    def kinds(self) -> set[str]:
        return {s.kind for s in self.segments}


def encode(recipe: Recipe) -> bytes:
    header = json.dumps({
        "size": recipe.size, "sha256": recipe.sha256,
        "segments": [[s.kind, s.offset, s.length] for s in recipe.segments],
    }).encode()
    return MAGIC + struct.pack(">I", len(header)) + header + recipe.literal


def decode(data: bytes) -> Recipe:
    """A recipe from its bytes (trailing bytes, e.g. a partition's padding, ignored)."""
    if data[:len(MAGIC)] != MAGIC:
        raise RecipeError("not a netboot recipe (bad magic)")
    try:
        (n,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
        header = json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + n])
        literal_start = len(MAGIC) + 4 + n
        segments = tuple(Segment(str(k), int(o), int(length))
                         for k, o, length in header["segments"])
        size, digest = int(header["size"]), str(header["sha256"])
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise RecipeError(f"malformed netboot recipe: {e}") from None
    literal_len = sum(s.length for s in segments if s.kind == "literal")
    literal = data[literal_start:literal_start + literal_len]
    if len(literal) != literal_len:
        raise RecipeError("truncated netboot recipe")
    if any(s.kind not in KINDS or s.length < 0 or s.offset < 0 for s in segments):
        raise RecipeError("netboot recipe with an unknown or negative segment")
    if sum(s.length for s in segments) != size:
        raise RecipeError("netboot recipe whose segments do not add up to its size")
    return Recipe(size, digest, segments, literal)


def chunks(recipe: Recipe, sources: Mapping[str, Path], chunk: int = CHUNK) -> Iterator[bytes]:
    """The assembled file, in chunks. RecipeError when a source is missing or short."""
    missing = sorted(recipe.kinds() - {"literal"} - set(sources))
    if missing:
        raise RecipeError(f"no source for {', '.join(missing)}")
    for s in recipe.segments:
        if s.kind == "literal":
            yield recipe.literal[s.offset:s.offset + s.length]
            continue
        with sources[s.kind].open("rb") as f:
            f.seek(s.offset)
            left = s.length
            while left:
                data = f.read(min(chunk, left))
                if not data:
                    raise RecipeError(f"{sources[s.kind]} ended {left} bytes early")
                left -= len(data)
                yield data


def assemble(recipe: Recipe, sources: Mapping[str, Path], write: Callable[[bytes], object]
             ) -> str:
    """Write the assembled file; returns its sha256 (the caller compares, or trusts
    the recipe's after one check)."""
    h = hashlib.sha256()
    for data in chunks(recipe, sources):
        h.update(data)
        write(data)
    return h.hexdigest()


def self_contained(recipe: Recipe, sources: Mapping[str, Path]) -> Recipe:
    """The recipe with every ESP segment inline: for a neighbour that has no ESP
    (it was netbooted) but will serve the same file from its root and verity."""
    literal = bytearray()
    segments = []
    for s in recipe.segments:
        if s.kind in ("literal", "esp"):
            one = Recipe(s.length, "", (s,), recipe.literal)
            data = b"".join(chunks(one, sources))
            segments.append(Segment("literal", len(literal), len(data)))
            literal += data
        else:
            segments.append(s)
    return Recipe(recipe.size, recipe.sha256, tuple(segments), bytes(literal))
