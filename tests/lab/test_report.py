"""`kubermesh lab report`: the mesh as a lab node's ospf6d sees it (real FRR), judged
by mesh.resilience: what it says of a line, and of the line once a cable closes it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from kubermesh.cli import main
from tests.lab.conftest import LabFactory

pytestmark = pytest.mark.lab
SVG = "{http://www.w3.org/2000/svg}"


def report(name: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["lab", "report", "--lab", name, *args]) == 0
    return capsys.readouterr().out


def test_the_report_finds_the_single_points_of_failure_of_a_line_and_a_ring_has_none(
        make_lab: LabFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lab = make_lab("ring:5")
    rid = {i: lab.node(i).router_id for i in range(1, 6)}
    lab.cut(1, 5)  # a line n1 - n2 - n3 - n4 - n5
    lab.wait_converged(timeout=60)

    def wait_cables(n: int) -> None:
        """Until node 3 sees n cables (a cut cable's LSAs are re-originated)."""
        deadline = time.monotonic() + 30
        while True:
            seen = json.loads(report(lab.name, capsys, "--json", "--node", "3"))["cables"]
            if seen == n:
                return
            assert time.monotonic() < deadline, f"n3 sees {seen} cables, not {n}"
            time.sleep(1)

    wait_cables(4)
    r = json.loads(report(lab.name, capsys, "--json", "--node", "3"))
    assert (r["nodes"], r["cables"], r["pieces"]) == (5, 4, 1)
    assert sorted(r["articulation_points"]) == sorted(rid[i] for i in (2, 3, 4))
    assert len(r["bridges"]) == 4
    # Named by the hostnames their loopbacks give (what `kubermesh status` shows).
    assert set(r["names"]) == set(rid.values())
    text = report(lab.name, capsys, "--node", "1")
    assert "single points of failure: 3 nodes" in text and "add a cable between" in text
    # The picture: every node in the colour of the stage its own status gives, the
    # three inner nodes ringed, the four cables of the line drawn as bridges.
    picture = tmp_path / "mesh.svg"
    report(lab.name, capsys, "--node", "1", "--svg", str(picture))
    svg = ElementTree.parse(picture).getroot()
    circles = [c for c in svg.iter(SVG + "circle") if "node" in c.get("class", "").split()]
    stages = {s.router_id: s.stage for s in lab.status()}
    assert sorted(c.get("data-stage", "") for c in circles) == sorted(stages.values())
    assert sum("cut" in c.get("class", "").split() for c in circles) == 3
    assert sum(x.get("class") == "bridge" for x in svg.iter(SVG + "line")) == 4

    lab.plug(1, 5)  # a ring again: no single point of failure
    lab.wait_converged(timeout=60)
    wait_cables(5)
    r = json.loads(report(lab.name, capsys, "--json"))
    assert r["articulation_points"] == [] and r["bridges"] == []
    assert "no single point of failure" in report(lab.name, capsys)
