"""The site file the build bakes in: private to its owner, valid, and its text.

It holds the site's secrets (the OSPFv3 key, the bootstrap token), so a file
that other users can open is refused as ssh refuses such a private key.
"""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

from image.errors import BuildError
from mesh import site as sitefile


def check_private(path: Path) -> None:
    """Refuse a site file that its group or other users may read or write."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # load_site says why it cannot be read
    if mode & 0o077:
        raise BuildError(f"{path} is open to other users (mode {mode:04o}); "
                         "it holds the site's secrets", hint=f"chmod 600 {path}")


def load(path: Path | None) -> tuple[str, sitefile.Site, bool]:
    """The site's text, the site, and whether it is a generated demo site (no path).

    A missing, unreadable, open or invalid file is refused here, before anything
    is built: SiteError names the file and every field at fault.
    """
    if path is None:
        text = sitefile.new_site_toml("demo")
        return text, sitefile.parse_site(tomllib.loads(text), "demo site"), True
    check_private(path)
    site = sitefile.load_site(path)
    return path.read_text(), site, False
