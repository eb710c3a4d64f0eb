"""Topology specs."""

from __future__ import annotations

import pytest

from mesh.topology import parse


def test_line_ring_grid() -> None:
    assert parse("line:3").edges == ((1, 2), (2, 3))
    ring = parse("ring:4")
    assert ring.edges == ((1, 2), (1, 4), (2, 3), (3, 4))
    assert all(ring.degree(n) == 2 for n in range(1, 5))
    grid = parse("grid:3x4")
    assert grid.nodes == 12 and len(grid.edges) == 3 * 3 + 2 * 4
    assert grid.degree(1) == 2 and grid.degree(6) == 4
    assert grid.distances(1)[12] == 5


@pytest.mark.parametrize("n,k,seed", [(30, 4, 1), (100, 3, 7), (400, 4, 2), (20, 2, 3), (5, 4, 9)])
def test_random_is_connected_and_degree_bounded(n: int, k: int, seed: int) -> None:
    t = parse(f"random:{n}:{k}:{seed}")
    assert t.nodes == n and t.connected()
    assert max(t.degree(i) for i in range(1, n + 1)) <= k
    assert len(set(t.edges)) == len(t.edges)
    assert all(a < b for a, b in t.edges)
    assert parse(f"random:{n}:{k}:{seed}") == t  # reproducible


def test_random_has_redundancy() -> None:
    t = parse("random:30:4")
    assert len(t.edges) > 29  # more than a tree: there are other paths to fail over to


@pytest.mark.parametrize("spec", ["floor:4x5", "floor:20x20", "floor:10x10:3:7", "floor:1x2",
                                  "floor:5x8:3:4"])
def test_a_floor_is_connected_cabled_to_near_pcs_with_a_few_long_runs(spec: str) -> None:
    t = parse(spec)
    rows, cols = (int(x) for x in spec.split(":")[1].split("x"))
    k = int(spec.split(":")[2]) if spec.count(":") >= 2 else 4
    assert t.nodes == rows * cols and t.connected()
    assert max(t.degree(i) for i in range(1, t.nodes + 1)) <= k
    assert parse(spec) == t  # reproducible

    def cell(i: int) -> tuple[int, int]:
        return divmod(i - 1, cols)

    def span(a: int, b: int) -> int:  # cells apart, along the floor
        (ra, ca), (rb, cb) = cell(a), cell(b)
        return max(abs(ra - rb), abs(ca - cb))

    far = [e for e in t.edges if span(*e) > 2]
    if t.nodes >= 20:
        assert 1 <= len(far) <= -(-t.nodes // 25) + 1, far  # a few long runs, no more
        assert len(t.edges) > t.nodes - 1  # more than a tree
    assert sum(span(*e) <= 2 for e in t.edges) >= len(t.edges) - len(far)


def test_without() -> None:
    line = parse("line:4")
    assert not line.without(dead=[2]).connected()
    assert parse("ring:4").without(cut=[(2, 1)]).connected()
    assert parse("ring:4").without(cut=[(2, 1)]).distances(1)[2] == 3


@pytest.mark.parametrize("spec", ["", "ring", "ring:2", "line:x", "grid:3", "grid:0x3",
                                  "random:10", "random:10:1", "star:5", "line:5000",
                                  "floor:1x1", "floor:3", "floor:3x3:2", "floor:40x40"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="topology"):
        parse(spec)
