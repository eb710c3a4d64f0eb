"""Control-plane slots elected by the mesh itself, and etcd on their holders: the
node runtime in every node of a real FRR lab, slots claimed through OSPFv3, real
etcd (Debian's 3.4) started by the runtime; a holder's silent death, its slot
taken over after the grace and its etcd member replaced, and the holder's return."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.stack import lowest_router_ids, slot_etcd_differs, slot_views, slots_differ
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


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    f = tmp_path / "site.toml"
    f.write_text(new_site_toml("slots").replace("grace = 300", f"grace = {GRACE}"))
    f.chmod(0o600)
    return f


def test_slots_and_etcd_are_elected_taken_over_after_the_grace_and_not_taken_back(
        make_lab: LabFactory, site_file: Path) -> None:
    # 2-connected: a dead holder cuts no one off (a cut-off part elects its own holders).
    lab = make_lab("grid:3x3", site_file=site_file, agent=True)
    nodes = [n.index for n in lab.state.nodes]
    first = lowest_router_ids(lab, nodes, 3)
    # A cold start: the three lowest router-ids, in order, with no contest.
    wait_for("three slots held by the three lowest router-ids",
             lambda: slots_differ(lab, dict(enumerate(first))), timeout=60)
    # The holders found one etcd cluster together, the others run none.
    founded = wait_for("an etcd cluster of the three holders",
                       lambda: slot_etcd_differs(lab, first), timeout=60)
    print(f"\netcd cluster of the slot holders answering {founded:.1f} s after the election")
    assert not any((lab.node_dir(lab.node(i)) / "etcd").exists()
                   for i in nodes if i not in first)

    victim = first[1]
    lab.kill(victim)
    left = [i for i in nodes if i != victim]
    heir = lowest_router_ids(lab, [i for i in left if i not in first], 1)[0]
    killed = time.monotonic()
    # During the grace the slot stays vacated: a holder that reboots comes back to it.
    wait_for("slot 1 shown vacated", lambda: [
        f"n{i}: {v.get('holders')} {v.get('vacated')}" for i, v in slot_views(lab).items()
        if "1" in v.get("holders", {}) or "1" not in v.get("vacated", {})], timeout=20)
    assert time.monotonic() - killed < GRACE
    taken = wait_for("slot 1 taken over by the lowest router-id without a slot",
                     lambda: slots_differ(lab, {0: first[0], 1: heir, 2: first[2]}),
                     timeout=GRACE + 40)
    assert time.monotonic() - killed >= GRACE, "taken over before the grace ran out"
    print(f"slot 1 taken over {time.monotonic() - killed:.1f} s after its holder died "
          f"(grace {GRACE} s; {taken:.1f} s after the vacated slot was seen)")
    # The heir replaced the dead holder's etcd member: three members, all running.
    replaced = wait_for("etcd with the heir's member instead of the dead holder's",
                        lambda: slot_etcd_differs(lab, [first[0], heir, first[2]]), timeout=60)
    print(f"etcd healthy with three members again {replaced:.1f} s after the takeover")

    # The old holder comes back remembering slot 1: its heir keeps it.
    lab.revive(victim)
    wait_for("the returning node to hold no slot",
             lambda: slots_differ(lab, {0: first[0], 1: heir, 2: first[2]})
             + ([] if victim in slot_views(lab) and slot_views(lab)[victim] else ["no status yet"]),
             timeout=60)
    time.sleep(3)
    assert slots_differ(lab, {0: first[0], 1: heir, 2: first[2]}) == []
    log = lab.node_dir(lab.node(victim)) / "agent.log"
    said = log.read_text()
    assert "was taken over by router-id" in said or "yielding control-plane slot 1" in said
    # Back without a slot, it runs no etcd and keeps no member data.
    assert not (lab.node_dir(lab.node(victim)) / "etcd").exists()
    assert slot_etcd_differs(lab, [first[0], heir, first[2]]) == []
