"""Fixtures for lab tests: real namespaces, real FRR, always removed."""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.netns import Lab
from mesh.site import Site
from mesh.topology import parse

LabFactory = Callable[..., Lab]


def unique_name() -> str:
    return "t" + secrets.token_hex(3)


def _factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    made: list[Lab] = []
    failed_before = request.session.testsfailed

    def make(spec: str, site_file: Path | None = None, sites: dict[int, Site] | None = None,
             wait: bool = True, agent: bool = False, twins: dict[int, int] | None = None,
             services: dict[str, list[int]] | None = None,
             kubernetes: Path | None = None) -> Lab:
        lab = Lab(unique_name())
        made.append(lab)
        topo = parse(spec)
        lab.up(topo, site_file=site_file, sites=sites, agent=agent, twins=twins,
               services=services, kubernetes=kubernetes)
        if wait:
            lab.wait_converged(timeout=60 + topo.nodes)
        return lab

    try:
        yield make
    finally:
        # A failed test's lab leaves its logs behind (KEPT_LOGS), and says where.
        # So does one where an FRR daemon crashed, even if watchfrr brought it back.
        failed = request.session.testsfailed > failed_before
        for lab in made:
            crashes = [str(p.relative_to(lab.dir)) for p in lab.crash_logs()] \
                if lab.exists() else []
            kept = lab.down(keep_logs=failed or bool(crashes))
            if kept is not None:
                print(f"\nlab {lab.name}: logs kept in {kept}")
            if crashes:
                warnings.warn(f"lab {lab.name}: FRR crashed ({', '.join(crashes)}); its "
                              f"logs are kept in {kept}", stacklevel=1)


@pytest.fixture
def make_lab(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    yield from _factory(request)


@pytest.fixture(scope="module")
def make_module_lab(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    yield from _factory(request)
