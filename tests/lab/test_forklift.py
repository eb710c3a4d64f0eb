"""The forklift in CI: a third of a warehouse floor's PCs die at once (silent
death), and every survivor then routes exactly to the survivors it is still
cabled to, and to no dead or cut-off node. The node runtime runs in every node,
as in the image. Larger labs: bench/forklift.py."""

from __future__ import annotations

import itertools
import random
from ipaddress import IPv6Address

import pytest

from tests.lab.conftest import LabFactory
from tests.lab.test_mesh import reach_all

pytestmark = pytest.mark.lab


def test_a_third_of_a_floor_dies_at_once_and_the_survivors_route_exactly(
        make_lab: LabFactory) -> None:
    lab = make_lab("floor:5x9:4:3", agent=True)  # 45 PCs, each cabled to its nearest
    topo = lab.state.topology
    nodes = list(range(1, topo.nodes + 1))
    victims = random.Random(7).sample(nodes, topo.nodes // 3)
    lab.kill_many(victims)
    assert sorted(lab.state.dead) == sorted(victims)
    lab.wait_converged(timeout=120)

    survivors = [n for n in nodes if n not in victims]
    after = topo.without(dead=victims)
    loopback = {n: IPv6Address(lab.node(n).loopback) for n in nodes}
    for n in survivors:
        should = {loopback[m] for m in after.distances(n) if m != n}
        assert set(lab.routes(n)) == should, (
            f"n{n}: routes to {len(lab.routes(n))} loopbacks, should to {len(should)}")
    # Traffic flows where a path is left: a sample of pairs in one piece.
    pairs = [(a, b) for a, b in itertools.permutations(survivors, 2)
             if b in after.distances(a)]
    sample = random.Random(8).sample(pairs, min(30, len(pairs)))
    assert reach_all(lab, sample) == []
