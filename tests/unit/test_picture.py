"""The mesh's picture (mesh.picture): a chain of single points of failure and a
ring drawn, coloured by the stages given, the same picture for the same seed."""

from __future__ import annotations

from xml.etree import ElementTree

from mesh import light, picture, resilience
from tests.unit.test_resilience import mesh

SVG = "{http://www.w3.org/2000/svg}"


def _draw(spec: str, stages: dict[str, str], seed: int = 1) -> tuple[str, ElementTree.Element]:
    m = mesh(spec)
    r = resilience.report(m, samples=50)
    text = picture.svg(m, r, stages, f"a {spec}", seed)
    return text, ElementTree.fromstring(text)


def _nodes(svg: ElementTree.Element) -> list[ElementTree.Element]:
    return [c for c in svg.iter(SVG + "circle") if "node" in c.get("class", "").split()]


def test_a_line_shows_its_single_points_of_failure_and_its_stages() -> None:
    text, svg = _draw("line:5", {"n1": "kubelet", "n2": "links"})
    nodes = _nodes(svg)
    assert len(nodes) == 5
    cut = sorted(c.findtext(SVG + "title", "").split()[0] for c in nodes
                 if "cut" in c.get("class", "").split())
    assert cut == ["n2", "n3", "n4"]
    assert sum(x.get("class") == "bridge" for x in svg.iter(SVG + "line")) == 4
    fill = {c.findtext(SVG + "title", "").split()[0]: c.get("fill") for c in nodes}
    assert fill["n1"] == "#00c800" and fill["n2"] == "#ff5000"  # green, orange: the light's
    assert fill["n3"] == picture.UNKNOWN  # not known here
    assert "stage not known here" in text
    # Every node has its own place.
    places = {(c.get("cx"), c.get("cy")) for c in nodes}
    assert len(places) == 5


def test_a_ring_has_none_and_the_picture_is_the_same_for_the_same_seed() -> None:
    every = {f"n{i}": "overlay" for i in range(1, 7)}
    text, svg = _draw("ring:6", every)
    assert not any("cut" in c.get("class", "").split() for c in _nodes(svg))
    assert not any(x.get("class") == "bridge" for x in svg.iter(SVG + "line"))
    assert "stage not known here" not in text
    assert {c.get("fill") for c in _nodes(svg)} == {"#{:02x}{:02x}{:02x}".format(
        *light.STAGE_COLOURS["overlay"][1])}
    assert _draw("ring:6", every)[0] == text
    assert _draw("ring:6", every, seed=2)[0] != text


def test_four_hundred_nodes_without_labels() -> None:
    _, svg = _draw("random:400:4:7", {})
    assert len(_nodes(svg)) == 400
    assert not [t for t in svg.iter(SVG + "text") if t.text and t.text.startswith("n1")]
