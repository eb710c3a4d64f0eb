"""The one way a file is written: atomically, created with its final mode.

The temporary file is made with `mode` from the start (O_EXCL, umask cleared for
the call), so a secret never has a world-readable moment, and it replaces the
target by rename, so a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, mode: int, owner: str | None = None,
                 only_if_changed: bool = False) -> bool:
    """Write `data` to `path` with permissions `mode` (and `owner`:group, where that
    user exists). With `only_if_changed`, an identical file is left alone.
    Returns whether the file was written."""
    raw = data.encode() if isinstance(data, str) else data
    if only_if_changed:
        try:
            st = path.stat()
            if (st.st_mode & 0o7777) == mode and path.read_bytes() == raw:
                return False
        except OSError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # Random, not the PID: one left by a killed writer on a persistent /var must not
    # block the same PID after a reboot.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    old_umask = os.umask(0)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    finally:
        os.umask(old_umask)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        if owner is not None:
            # Without that user (unit tests, a build host) the file stays root's.
            with contextlib.suppress(LookupError, PermissionError):
                shutil.chown(tmp, owner, owner)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True
