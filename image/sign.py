"""Secure Boot: every UKI of an image is signed with the site's boot key (sbsign).

PCs that enroll the site's certificate (boot.certificate; `kubermesh site
boot-cert`) in their firmware's db and turn Secure Boot on boot the site's images
and nothing else; dm-verity then pins every block of the root to the signed
command line's root hash.
"""

from __future__ import annotations

from pathlib import Path

from firstboot.files import write_atomic
from image.run import Log, run
from mesh.site import Site


def sign(log: Log, work: Path, site: Site, efi: Path) -> Path:
    """Sign efi in place with the site's boot key (written 0600 in the private work
    directory, removed right after)."""
    key, cert = work / "boot.key", work / "boot.crt"
    write_atomic(key, site.secrets.boot_key, 0o600)
    write_atomic(cert, site.boot.certificate, 0o644)
    signed = efi.with_name(f".{efi.name}.signed")
    try:
        run(log, ["sbsign", "--key", key, "--cert", cert, "--output", signed, efi],
            hint="sbsign (Debian sbsigntool) could not sign the UKI: ./dev.sh setup installs it")
    finally:
        key.unlink(missing_ok=True)
    signed.replace(efi)
    return efi


def verify(log: Log, work: Path, site: Site, efi: Path) -> None:
    """sbverify efi against the site's certificate (BuildError when it does not hold)."""
    cert = work / "boot.crt"
    write_atomic(cert, site.boot.certificate, 0o644)
    run(log, ["sbverify", "--cert", cert, efi], hint=f"{efi.name} is not signed by the site")
