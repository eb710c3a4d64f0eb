"""Fixtures for lab tests: real namespaces, real FRR, always removed."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mesh.lab import Lab
from mesh.site import Site
from mesh.topology import parse

LabFactory = Callable[..., Lab]


def unique_name() -> str:
    return "t" + secrets.token_hex(3)


def _factory() -> Iterator[LabFactory]:
    made: list[Lab] = []

    def make(spec: str, site_file: Path | None = None, sites: dict[int, Site] | None = None,
             wait: bool = True, agent: bool = False, twins: dict[int, int] | None = None) -> Lab:
        lab = Lab(unique_name())
        made.append(lab)
        topo = parse(spec)
        lab.up(topo, site_file=site_file, sites=sites, agent=agent, twins=twins)
        if wait:
            lab.wait_converged(timeout=60 + topo.nodes)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            lab.down()


@pytest.fixture
def make_lab() -> Iterator[LabFactory]:
    yield from _factory()


@pytest.fixture(scope="module")
def make_module_lab() -> Iterator[LabFactory]:
    yield from _factory()
