"""write_atomic: the one way the node writes a file (final mode from the start,
replaced by rename, nothing left behind)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from firstboot.files import write_atomic


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("mask", [0, 0o077, 0o022])
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o755])
def test_the_file_has_exactly_its_mode_whatever_the_umask(tmp_path: Path, mask: int,
                                                          mode: int) -> None:
    os.umask(mask)
    path = tmp_path / "sub" / "dir" / "f"  # parents are made
    assert write_atomic(path, "secret\n", mode) is True
    assert path.read_text() == "secret\n" and path.stat().st_mode & 0o7777 == mode
    assert os.umask(mask) == mask  # the caller's umask is back
    # Replacing keeps to the new mode, too.
    write_atomic(path, b"\x00bytes", 0o600)
    assert path.read_bytes() == b"\x00bytes" and path.stat().st_mode & 0o7777 == 0o600


def test_only_if_changed_leaves_an_identical_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, "a", 0o644)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    ino = path.stat().st_ino
    assert write_atomic(path, "a", 0o644, only_if_changed=True) is False
    assert path.stat().st_mtime_ns == 1_000_000_000 and path.stat().st_ino == ino
    assert write_atomic(path, "a", 0o600, only_if_changed=True) is True  # mode differs
    assert path.stat().st_mode & 0o777 == 0o600
    assert write_atomic(path, "b", 0o600, only_if_changed=True) is True
    assert path.read_text() == "b"
    assert write_atomic(path, "b", 0o600) is True  # without the flag: always


def test_an_owner_that_does_not_exist_leaves_the_file_roots(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, "x", 0o640, owner="no-such-user-kubermesh")
    assert path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o777 == 0o640


def test_nothing_is_left_behind_when_writing_fails(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_text("old")

    def chown(*args: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(shutil, "chown", chown)
    with pytest.raises(OSError, match="Read-only file system"):
        write_atomic(path, "new", 0o640, owner="root")
    assert path.read_text() == "old"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no temporary file
    write_atomic(path, "new", 0o640)  # and the next write is not in its way
    assert path.read_text() == "new"
