"""Shared by every tier: one boot-signing key per site name for the whole run.

RSA key generation (mesh.site.new_boot_key) costs ~0.1 s, and hundreds of tests
make sites; the keys are real, only reused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from mesh import site

_cached_boot_key = functools.cache(site.new_boot_key)


@pytest.fixture(autouse=True)
def _reuse_boot_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(site, "new_boot_key", _cached_boot_key)
    yield
