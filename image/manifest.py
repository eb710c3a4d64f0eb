"""manifest.json and SHA256SUMS: what an image is, for people and for tools."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from firstboot.files import write_atomic


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def site_fingerprint(text: str, name: str, generated: bool, boot_certificate: str
                     ) -> dict[str, Any]:
    """Identifies the baked-in site without revealing it: a hash, never the secrets;
    and the (public) certificate its UKIs are signed for."""
    return {"name": name, "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "demo": generated, "boot_certificate": boot_certificate}


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n", 0o644)


def write_sha256sums(out_dir: Path) -> Path:
    """SHA256SUMS over every file in the output, in `sha256sum -c` format."""
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{sha256(p)}  {p.relative_to(out_dir)}\n" for p in files]
    sums = out_dir / "SHA256SUMS"
    write_atomic(sums, "".join(lines), 0o644)
    return sums
