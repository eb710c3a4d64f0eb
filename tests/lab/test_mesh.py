"""The mesh routes and heals: real FRR in network namespaces, configs from mesh/."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from lab.netns import Lab
from mesh import plan
from mesh.site import load_site, new_site_toml
from tests.lab.conftest import LabFactory, unique_name

pytestmark = pytest.mark.lab


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def reach_all(lab: Lab, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ping every pair concurrently; return the pairs that failed."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ok = list(pool.map(lambda p: lab.ping(p[0], p[1], count=1), pairs))
    return [p for p, good in zip(pairs, ok, strict=True) if not good]


def next_hop_node(lab: Lab, src: int, dst: int) -> int:
    """The neighbour src actually forwards to for dst (the ECMP path the kernel picked)."""
    out = lab.exec(src, ["ip", "-6", "-j", "route", "get", lab.node(dst).loopback]).stdout
    dev = json.loads(out)[0]["dev"]
    return lab.node(src).links[dev]


@pytest.mark.parametrize("spec", ["ring:6", "grid:4x4", "random:30:4"])
def test_converges_and_pings(make_lab: LabFactory, spec: str) -> None:
    lab = make_lab(spec)
    topo = lab.state.topology
    for st in lab.status():
        index = int(st.name[1:])
        assert st.routes_to == topo.nodes - 1, st
        assert st.full == topo.degree(index), st  # one Full adjacency per cable
        full = {a.neighbour for a in st.adjacencies if a.state == "Full"}
        assert full == {f"n{m}" for m in topo.neighbours(index)}
    rng = random.Random(spec)
    far = max(topo.distances(1).items(), key=lambda kv: kv[1])[0]
    sample = [(1, far)] + [tuple(rng.sample(range(1, topo.nodes + 1), 2)) for _ in range(12)]
    assert reach_all(lab, sample) == []  # type: ignore[arg-type]


def test_ecmp_paths_are_installed(make_lab: LabFactory) -> None:
    lab = make_lab("ring:4")
    # n1 and n3 are two hops apart both ways round: two next hops. Converged means
    # routed: the second equal path may reach the kernel a moment after the first.
    n3 = IPv6Address(lab.node(3).loopback)
    wait_for("both paths from n1 to n3", lambda: len(lab.routes(1).get(n3, [])) == 2, 20)
    hops = lab.routes(1)[n3]
    assert sorted(dev for _, dev in hops) == ["m2", "m4"]
    assert all(via.startswith("fe80:") for via, _ in hops)


def test_kill_transit_node_survivors_reach_each_other(make_lab: LabFactory) -> None:
    lab = make_lab("random:30:4")
    topo = lab.state.topology
    # A pair whose current path crosses a transit node, and that node.
    src, dst = max(((1, d) for d in range(2, topo.nodes + 1)),
                   key=lambda p: topo.distances(1)[p[1]])
    victim = next_hop_node(lab, src, dst)
    assert victim != dst
    assert lab.ping(src, dst)
    lab.kill(victim)
    lab.wait_converged(timeout=30)
    survivors = [n for n in range(1, topo.nodes + 1) if n != victim]
    after = topo.without(dead=[victim])
    connected = [(a, b) for a, b in itertools.permutations(survivors, 2)
                 if b in after.distances(a)]
    assert reach_all(lab, connected) == []
    # Nobody keeps a route to the dead node, and the path avoids it now.
    dead_lo = IPv6Address(lab.node(victim).loopback)
    assert all(dead_lo not in lab.routes(n) for n in survivors)
    if dst in after.distances(src):
        assert next_hop_node(lab, src, dst) != victim
    # Partitioned survivors, if any, have no route across the gap.
    for a in survivors:
        unreachable = set(survivors) - set(after.distances(a))
        routed = set(lab.routes(a))
        assert not routed & {IPv6Address(lab.node(b).loopback) for b in unreachable}


def test_kill_partitions_a_line(make_lab: LabFactory) -> None:
    lab = make_lab("line:4")
    lab.kill(2)
    lab.wait_converged(timeout=30)
    assert lab.routes(1) == {}
    assert set(lab.routes(3)) == {IPv6Address(lab.node(4).loopback)}
    assert lab.ping(3, 4) and not lab.ping(1, 3, count=1)
    lab.revive(2)
    lab.wait_converged(timeout=30)
    assert lab.ping(1, 4)


@pytest.mark.parametrize("daemon", ["ospf6d", "zebra"])
def test_a_crashed_daemon_is_started_again_with_its_configuration(
        make_lab: LabFactory, tmp_path: Path, daemon: str) -> None:
    """As on a PC, watchfrr starts again an FRR daemon that dies (an ospf6d 8.4 can
    crash in a BFD flap; when zebra dies, watchfrr starts every daemon again), and
    each reads the node's configuration again: the node's routes come back with no
    one's help. The crash log FRR writes is the node's, and kept with the lab's logs."""
    lab = make_lab("line:3")
    old = lab._daemon_pid(lab.node(2), daemon)
    assert old is not None
    os.kill(old, signal.SIGSEGV)  # what the crash in ospf6_neighbor_delete was
    wait_for(f"n2's {daemon} gone", lambda: not running(old), timeout=10)

    def started_again() -> bool:
        new = lab._daemon_pid(lab.node(2), daemon)
        return new not in (None, old) and not lab.crashed(lab.node(2))
    wait_for(f"watchfrr to start n2's {daemon} again", started_again, timeout=60)
    # Both adjacencies Full on n2's ospf6d: it has its areas and key again.
    wait_for("n2's adjacencies Full again",
             lambda: next(st for st in lab.status() if st.name == "n2").full == 2, timeout=60)
    lab.wait_converged(timeout=60)
    assert lab.ping(1, 3)
    assert [p.relative_to(lab.dir) for p in lab.crash_logs()] == [
        p.relative_to(lab.dir) for p in lab.dir.glob(f"n2/tmp/{daemon}.*/crashlog")]
    kept = lab.down(keep_logs=tmp_path / "kept")
    assert kept is not None
    assert [p.name for p in kept.glob(f"n2/tmp/{daemon}.*/*")] == ["crashlog"]


def test_cut_takes_the_other_path_and_plug_restores(make_lab: LabFactory) -> None:
    lab = make_lab("ring:6")
    n2 = IPv6Address(lab.node(2).loopback)
    # "Converged" is a route to everyone, not yet the shortest one: a cable whose
    # interface came up after ospf6d started joins a moment later.
    wait_for("n1's direct path to n2", lambda: [d for _, d in lab.routes(1)[n2]] == ["m2"])
    lab.cut(1, 2)
    lab.wait_converged(timeout=30)
    assert [dev for _, dev in lab.routes(1)[n2]] == ["m6"]  # the long way round
    assert lab.ping(1, 2)
    trace = lab.exec(1, ["ping", "-6", "-c", "1", "-W", "1", str(n2)]).stdout
    assert "ttl=60" in trace  # 4 transit hops: n6, n5, n4, n3
    lab.plug(1, 2)
    lab.wait_converged(timeout=30)
    wait_for("the direct path back", lambda: [d for _, d in lab.routes(1)[n2]] == ["m2"])


def test_a_provisioning_prefix_on_a_link_is_never_announced(make_lab: LabFactory) -> None:
    """The /64 a node serves a newcomer from (netboot) stays on its link: FRR's
    per-link prefix filter, with a routed prefix beside it as the control."""
    lab = make_lab("line:3")
    ula = lab.site.mesh.ula
    n2 = lab.node(2)
    provisioning = plan.provisioning_prefix(ula, n2.node_id, "m1")
    control = plan.subnet(ula, 0x0100)  # an ordinary site /64: announced
    for prefix in (provisioning, control):
        lab.exec(2, ["ip", "-6", "addr", "add", f"{prefix.network_address + 1}/64", "dev", "m1",
                     "nodad"])

    def n3_routes() -> set[str]:
        out = lab.exec(3, ["ip", "-6", "-j", "route", "show"]).stdout
        return {r.get("dst", "") for r in json.loads(out or "[]")}
    wait_for(f"n3 to learn the control prefix {control}", lambda: str(control) in n3_routes())
    assert str(provisioning) not in n3_routes()
    lsdb = json.dumps(lab.vtysh(lab.node(3), "show ipv6 ospf6 route json"))
    assert str(control) in lsdb and str(provisioning) not in lsdb, lsdb


def test_wrong_key_forms_no_adjacency_and_injects_no_route(make_lab: LabFactory,
                                                          tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"
    site_file.write_text(new_site_toml("keys"))
    site = load_site(site_file)
    # The intruder: same site, wrong OSPFv3 authentication key.
    bad = dataclasses.replace(site, secrets=dataclasses.replace(
        site.secrets, ospf_key="WrongKeyWrongKeyWrongKey"))
    lab = make_lab("ring:4", site_file=site_file, sites={2: bad}, wait=False)
    others = [1, 3, 4]
    loops = {n: IPv6Address(lab.node(n).loopback) for n in range(1, 5)}

    def others_converged() -> bool:
        return all(set(lab.routes(n)) == {loops[m] for m in others if m != n} for n in others)

    wait_for("n1, n3, n4 to route to each other around n2", others_converged, timeout=30)
    time.sleep(2 * site.mesh.dead_interval)  # time enough for any adjacency to form
    assert all(a.state != "Full" for a in lab.neighbours(2))
    for n in others:
        assert all(a.state != "Full" for a in lab.neighbours(n) if a.neighbour == "n2")
        assert loops[2] not in lab.routes(n)
    assert lab.routes(2) == {}
    assert not lab.ping(1, 2, count=1)
    # Control: the same node restarted with the site's key joins at once.
    lab.kill(2)
    lab.revive(2)
    lab.wait_converged(timeout=30)
    assert lab.ping(1, 2)


def kubermesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubermesh", *args], capture_output=True,
                          text=True, check=False, timeout=300)


def test_cli_end_to_end(tmp_path: Path) -> None:
    name = unique_name()
    try:
        r = kubermesh("lab", "up", "--lab", name, "--topology", "line:3")
        assert r.returncode == 0, r.stderr
        assert "converged in" in r.stderr
        r = kubermesh("lab", "status", "--lab", name, "--json")
        nodes = json.loads(r.stdout)
        assert [n["routes_to"] for n in nodes] == [2, 2, 2]
        assert [n["full_adjacencies"] for n in nodes] == [1, 2, 1]
        assert kubermesh("lab", "ping", "--lab", name, "n1", "n3").returncode == 0
        assert kubermesh("lab", "cut", "--lab", name, "n2", "n3").returncode == 0
        r = kubermesh("lab", "ping", "--lab", name, "n1", "n3")
        assert r.returncode == 1 and "cannot reach" in r.stderr
        assert kubermesh("lab", "plug", "--lab", name, "n2", "n3").returncode == 0
        assert kubermesh("lab", "kill", "--lab", name, "n3").returncode == 0
        r = kubermesh("lab", "status", "--lab", name, "--json")
        assert [n["alive"] for n in json.loads(r.stdout)] == [True, True, False]
        r = kubermesh("lab", "up", "--lab", name, "--topology", "line:3")
        assert r.returncode == 1 and "already up" in r.stderr
        r = kubermesh("lab", "kill", "--lab", name, "n9")
        assert r.returncode == 1 and "no node 'n9'" in r.stderr
    finally:
        r = kubermesh("lab", "down", "--lab", name)
    assert r.returncode == 0 and "removed 3 namespaces" in r.stderr
    assert not Lab(name).exists()


def test_bad_site_changes_nothing(tmp_path: Path) -> None:
    name = unique_name()
    bad = tmp_path / "site.toml"
    bad.write_text("version = 1\nname = 'x'\n[mesh]\nula = 'fd00::/64'\n")
    r = kubermesh("lab", "up", "--lab", name, "--topology", "ring:3", "--site", str(bad))
    assert r.returncode == 1
    assert "mesh.ula" in r.stderr and "expected a /48" in r.stderr
    assert "pods: missing table" in r.stderr
    assert not Lab(name).exists()
    r = kubermesh("lab", "up", "--lab", name, "--topology", "ring:2")
    assert r.returncode == 1 and "'2' is not a whole number >= 3" in r.stderr
    assert not Lab(name).exists()


def test_down_after_a_crash_removes_everything(make_lab: LabFactory) -> None:
    lab = make_lab("ring:3")
    daemons = [lab._daemon_pid(n, d) for n in lab.state.nodes for d in ("zebra", "ospf6d")]
    assert all(p is not None for p in daemons)
    lab.state_file.unlink()  # the lab's own record is gone, as after a crash
    fresh = Lab(lab.name)
    assert fresh.exists()
    fresh.down()
    assert fresh.removed == 3
    assert not fresh.exists() and not fresh.dir.exists()
    for pid in daemons:
        assert pid is not None and not running(pid)


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its (adoptive) parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
