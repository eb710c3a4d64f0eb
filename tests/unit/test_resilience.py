"""The mesh report's judgement (mesh.resilience): single points of failure, random
loss simulated with a fixed seed, and the cables that help most, in words too."""

from __future__ import annotations

import pytest

from mesh import resilience
from mesh.topology import parse


def mesh(spec: str) -> resilience.Mesh:
    t = parse(spec)
    return resilience.Mesh(tuple(f"n{i}" for i in range(1, t.nodes + 1)),
                           tuple((f"n{a}", f"n{b}") for a, b in t.edges))


def test_a_line_has_every_inner_node_and_every_cable_as_a_single_point_of_failure() -> None:
    r = resilience.report(mesh("line:5"))
    assert (r["nodes"], r["cables"], r["pieces"]) == (5, 4, 1)
    assert r["articulation_points"] == ["n2", "n3", "n4"]
    assert r["bridges"] == [["n1", "n2"], ["n2", "n3"], ["n3", "n4"], ["n4", "n5"]]
    assert r["degree_histogram"] == {"1": 2, "2": 3}
    # Losing one node of five (20 %) at random: an end (2 of 5 cases) leaves one piece
    # of 4; an inner one splits the survivors, so the exact mean is
    # (2/5)*1 + (2/5)*(3/4) + (1/5)*(2/4) = 0.8.
    assert r["survival"]["0.200"] == pytest.approx(0.8, abs=0.06)
    first = r["suggested_cables"][0]
    assert first["survival_after"] > first["survival_before"]
    assert set(first["cable"]) != {"n1", "n2"}  # not a cable that is already there


def test_a_ring_has_no_single_point_of_failure_and_a_chord_helps() -> None:
    r = resilience.report(mesh("ring:6"))
    assert r["articulation_points"] == [] and r["bridges"] == []
    assert r["survival"]["0.100"] == 1.0  # 10 % of 6 rounds to 1 node: a ring holds
    chords = [tuple(sorted(s["cable"])) for s in r["suggested_cables"]]
    assert chords and all(c not in {("n1", "n2"), ("n1", "n6")} for c in chords)
    text = resilience.words(r)
    assert "no single point of failure" in text
    a, b = r["suggested_cables"][0]["cable"]
    assert f"add a cable between {a} and {b}: ⅓-loss survival" in text


def test_the_report_is_reproducible_and_fast_enough_at_warehouse_scale() -> None:
    m = mesh("floor:20x20")
    r = resilience.report(m, samples=50)
    assert r == resilience.report(m, samples=50)
    assert r["nodes"] == 400 and 0 < r["survival"]["0.333"] < 1
    before = [s["survival_before"] for s in r["suggested_cables"]]
    after = [s["survival_after"] for s in r["suggested_cables"]]
    assert before[1:] == after[:-1] and all(b < a for b, a in zip(before, after, strict=True))


def test_the_live_mesh_is_what_the_spf_tree_reaches() -> None:
    m = resilience.mesh_of("a", {"b", "c"}, [("a", "b"), ("b", "c"), ("c", "d")],
                           {"a": "km-a"})
    assert m.nodes == ("a", "b", "c") and m.cables == (("a", "b"), ("b", "c"))
    r = resilience.report(m)
    assert "km-a" in resilience.words(r) or r["articulation_points"] == ["b"]
    assert resilience.words(resilience.report(resilience.mesh_of("a", set(), []))).startswith(
        "mesh: 1 nodes, 0 cables")


def test_two_triangles_joined_by_one_cable_and_a_pair_apart() -> None:
    """The bowtie's joining cable is its only bridge, its ends the only single points
    of failure; a pair cabled apart from it is a second piece with its own bridge."""
    triangles = [("a", "b"), ("b", "c"), ("a", "c"), ("x", "y"), ("y", "z"), ("x", "z")]
    m = resilience.Mesh(("a", "b", "c", "x", "y", "z", "p", "q"),
                        (*triangles, ("z", "c"), ("q", "p"), ("p", "q")))
    r = resilience.report(m, samples=20)
    assert (r["nodes"], r["cables"], r["pieces"]) == (8, 8, 2)
    assert r["articulation_points"] == ["c", "z"]
    assert r["bridges"] == [["c", "z"], ["p", "q"]]
    assert r["degrees"]["c"] == 3 and r["degrees"]["p"] == 1
    assert r["degree_histogram"] == {"1": 2, "2": 4, "3": 2}
