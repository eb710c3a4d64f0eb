"""Control-plane slots elected by the mesh itself: the node runtime in every node
of a real FRR lab, slots claimed through OSPFv3; a holder's silent death, its
slot taken over after the grace, and the holder's return."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from lab.netns import Lab
from mesh.site import new_site_toml
from tests.lab.conftest import LabFactory

pytestmark = pytest.mark.lab

GRACE = 8


def wait_for(what: str, problems: Callable[[], list[str]], timeout: float) -> float:
    """Poll until `problems()` is empty (returns the seconds it took); fail naming
    what was still wrong."""
    start = time.monotonic()
    while True:
        left = problems()
        if not left:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}: " + "; ".join(left[:8]))
        time.sleep(0.3)


def views(lab: Lab) -> dict[int, dict[str, Any]]:
    """Each live node's control_plane status."""
    out = {}
    for n in lab.state.nodes:
        if n.index in lab.state.dead:
            continue
        try:
            out[n.index] = json.loads(lab.status_file(n.index).read_text())["control_plane"]
        except (OSError, ValueError, KeyError):
            out[n.index] = {}
    return out


def agreed(lab: Lab, want: dict[int, int]) -> list[str]:
    """What differs from: slot -> node index `want`, seen alike by every live node,
    and each node saying itself which slot it holds."""
    holders = {str(s): lab.node(i).router_id for s, i in want.items()}
    problems = []
    for i, v in views(lab).items():
        if v.get("holders") != holders:
            problems.append(f"n{i} sees {v.get('holders')}")
        mine = next((s for s, n in want.items() if n == i), None)
        if v.get("slot") != mine:
            problems.append(f"n{i} holds {v.get('slot')}, not {mine}")
    return problems


def lowest(lab: Lab, among: list[int], k: int) -> list[int]:
    return sorted(among, key=lambda i: IPv4Address(lab.node(i).router_id))[:k]


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    f = tmp_path / "site.toml"
    f.write_text(new_site_toml("slots").replace("grace = 60", f"grace = {GRACE}"))
    f.chmod(0o600)
    return f


def test_slots_are_elected_taken_over_after_the_grace_and_not_taken_back(
        make_lab: LabFactory, site_file: Path) -> None:
    lab = make_lab("random:8:3", site_file=site_file, agent=True)
    nodes = [n.index for n in lab.state.nodes]
    first = lowest(lab, nodes, 3)
    # A cold start: the three lowest router-ids, in order, with no contest.
    wait_for("three slots held by the three lowest router-ids",
             lambda: agreed(lab, dict(enumerate(first))), timeout=60)

    victim = first[1]
    lab.kill(victim)
    left = [i for i in nodes if i != victim]
    heir = lowest(lab, [i for i in left if i not in first], 1)[0]
    killed = time.monotonic()
    # During the grace the slot stays vacated: a holder that reboots comes back to it.
    wait_for("slot 1 shown vacated", lambda: [
        f"n{i}: {v.get('holders')} {v.get('vacated')}" for i, v in views(lab).items()
        if "1" in v.get("holders", {}) or "1" not in v.get("vacated", {})], timeout=20)
    assert time.monotonic() - killed < GRACE
    taken = wait_for("slot 1 taken over by the lowest router-id without a slot",
                     lambda: agreed(lab, {0: first[0], 1: heir, 2: first[2]}),
                     timeout=GRACE + 40)
    assert time.monotonic() - killed >= GRACE, "taken over before the grace ran out"
    print(f"\nslot 1 taken over {time.monotonic() - killed:.1f} s after its holder died "
          f"(grace {GRACE} s; {taken:.1f} s after the vacated slot was seen)")

    # The old holder comes back remembering slot 1: its heir keeps it.
    lab.revive(victim)
    wait_for("the returning node to hold no slot",
             lambda: agreed(lab, {0: first[0], 1: heir, 2: first[2]})
             + ([] if victim in views(lab) and views(lab)[victim] else ["no status yet"]),
             timeout=60)
    time.sleep(3)
    assert agreed(lab, {0: first[0], 1: heir, 2: first[2]}) == []
    log = lab.node_dir(lab.node(victim)) / "agent.log"
    assert "was taken over by router-id" in log.read_text()
