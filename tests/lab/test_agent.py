"""The node agent in the lab: it finds its cables, configures FRR and reports,
as it does on a booted image (where the VM tests check it again)."""

from __future__ import annotations

import json
import os
import signal
import time
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from firstboot.status import NodeStatus, Stage, read
from lab.netns import Lab, LabError
from mesh.topology import parse
from tests.lab.conftest import LabFactory
from tests.lab.test_mesh import wait_for

pytestmark = pytest.mark.lab


def node_status(lab: Lab, n: int) -> NodeStatus:
    return read(lab.node_dir(lab.node(n)) / "status.json")


def agent_pid(lab: Lab, n: int) -> int:
    node = lab.node(n)
    for pid in lab._pids(node.namespace):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"firstboot.agent" in cmd:
            return pid
    raise AssertionError(f"no agent running in {node.name}")


def adjacency_uptime(lab: Lab, n: int, peer: int) -> float:
    """Seconds the OSPFv3 adjacency of n with peer has been up."""
    rid = lab.node(peer).router_id
    for x in lab.vtysh(lab.node(n), "show ipv6 ospf6 neighbor json")["neighbors"]:
        if x["neighborId"] == rid and x["state"] == "Full":
            h, m, s = (int(v) for v in x["duration"].split(":"))
            return h * 3600 + m * 60 + s
    return -1.0


def test_agents_configure_the_mesh(make_lab: LabFactory) -> None:
    lab = make_lab("ring:5", agent=True)
    # The lab sees the mesh converged; each agent notices within its next round.
    wait_for("every runtime to report stage overlay", lambda: all(
        node_status(lab, n).stage == Stage.OVERLAY and
        all(link.state == "Full" for link in node_status(lab, n).links) for n in range(1, 6)))
    for n in range(1, 6):
        st = node_status(lab, n)
        assert st.known_nodes == 4 and st.routes_to == 4
        others = [lab.node(m) for m in range(1, 6) if m != n]
        assert set(st.routed) == {o.loopback for o in others}
        assert set(st.known) == {o.router_id for o in others}
        assert sorted(link.name for link in st.links) == sorted(lab.node(n).links)
        assert all(link.carrier and link.state == "Full" for link in st.links)
        assert st.loopback == lab.node(n).loopback and st.conflicts == ()
        conf = (lab.node_dir(lab.node(n)) / "etc" / "frr.conf").read_text()
        assert all(f"interface {ifname}" in conf for ifname in lab.node(n).links)
    assert lab.ping(1, 3)


def test_cable_plugged_into_running_nodes_joins_and_leaves(make_lab: LabFactory) -> None:
    lab = make_lab("line:3", agent=True)
    n3 = IPv6Address(lab.node(3).loopback)
    assert [dev for _, dev in lab.routes(1)[n3]] == ["m2"]
    time.sleep(3)  # let the existing adjacency age, to see that it is not reset
    before = adjacency_uptime(lab, 2, 1)
    assert before >= 2
    plugged = time.monotonic()
    lab.plug(1, 3)  # a new cable between two running nodes
    wait_for("n1 to route to n3 over the new cable",
             lambda: [dev for _, dev in lab.routes(1).get(n3, [])] == ["m3"], timeout=20)
    joined = time.monotonic() - plugged
    assert joined < 20
    # The other adjacencies were not restarted by the reconfiguration.
    assert adjacency_uptime(lab, 2, 1) >= before + joined - 1
    assert "interface m3" in (lab.node_dir(lab.node(1)) / "etc" / "frr.conf").read_text()
    wait_for("n1's status to list m3", lambda: "m3" in {
        link.name for link in node_status(lab, 1).links if link.state == "Full"})

    lab.cut(1, 3)  # pulled out again
    wait_for("n1 to go round by n2 again",
             lambda: [dev for _, dev in lab.routes(1).get(n3, [])] == ["m2"], timeout=20)
    wait_for("m3 to leave n1's FRR configuration", lambda: "interface m3" not in (
        lab.node_dir(lab.node(1)) / "etc" / "frr.conf").read_text())
    assert adjacency_uptime(lab, 2, 1) > 0
    assert lab.ping(1, 3)


def test_agent_restart_recovers_without_disturbing_routing(make_lab: LabFactory) -> None:
    lab = make_lab("line:3", agent=True)
    time.sleep(2)
    before = adjacency_uptime(lab, 2, 1)
    old = agent_pid(lab, 2)
    os.kill(old, signal.SIGKILL)
    new = lab._spawn(lab.node(2), lab.agent_argv(lab.node(2)), "agent")  # as systemd would
    assert new != old
    log = lab.node_dir(lab.node(2)) / "agent.log"
    # It takes up the stage the first one reported, rather than starting again.
    wait_for("the restarted agent to resume",
             lambda: "resuming at stage overlay" in log.read_text())
    status_file = lab.node_dir(lab.node(2)) / "status.json"
    restarted = time.time()
    wait_for("the restarted agent to report stage overlay", lambda: status_file.stat().st_mtime
             > restarted and json.loads(status_file.read_text())["stage"] == "overlay")
    assert adjacency_uptime(lab, 2, 1) >= before  # FRR was not restarted or reconfigured
    assert log.read_text().count("stage booting ->") == 1, log.read_text()
    assert lab.ping(1, 3)


def test_duplicate_identity_is_reported(make_lab: LabFactory) -> None:
    # n4 is a clone of n1 (same MAC, so same node id, loopback and router-id).
    lab = make_lab("line:4", agent=True, twins={4: 1}, wait=False)
    assert lab.node(4).loopback == lab.node(1).loopback

    def reported(n: int) -> bool:
        try:
            return any("another node uses router-id" in c for c in node_status(lab, n).conflicts)
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    wait_for("n1 and n4 to report the conflict", lambda: reported(1) and reported(4), timeout=40)
    assert not reported(2) and not reported(3)
    assert "CONFLICT" in (lab.node_dir(lab.node(1)) / "agent.log").read_text()


def test_a_dead_neighbour_is_unreachable_not_a_conflict(make_lab: LabFactory) -> None:
    """n3 dies: its Router-LSA, still listing a link to n2, stays in n2's database
    for an hour. n2 reports n3 unreachable, routes to the rest, and no conflict,
    for longer than the conflict check's window."""
    lab = make_lab("line:3", agent=True)
    dead = lab.node(3).router_id
    lab.kill(3)

    def settled() -> bool:
        st = node_status(lab, 2)
        return st.unreachable == (dead,) and st.stage >= Stage.ROUTES

    wait_for("n2 to report n3 unreachable and route to n1", settled, timeout=30)
    lsdb = lab.vtysh(lab.node(2), "show ipv6 ospf6 database router json")
    assert any(x["advRouter"] == dead for area in lsdb["areaScopedLinkStateDb"]
               for x in area["lsa"]), "n3's stale Router-LSA is what this test is about"
    end = time.monotonic() + 45  # past the 30 s window of the phantom-link check
    while time.monotonic() < end:
        st = node_status(lab, 2)
        assert not st.conflicts, st.conflicts
        assert st.known == (lab.node(1).router_id,) and st.routes_to == 1, st
        time.sleep(2)
    assert "CONFLICT" not in (lab.node_dir(lab.node(2)) / "agent.log").read_text()


def test_agent_lab_without_frr_reload_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setattr("lab.netns.FRR_RELOAD", tmp_path / "frr-reload.py")
    lab = Lab("noreload", root=tmp_path / "labs")
    with pytest.raises(LabError, match="frr-pythontools"):
        lab.up(parse("line:2"), agent=True)
    assert not lab.exists()
    assert not lab._namespaces()
