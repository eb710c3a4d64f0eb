"""Anycast: real etcd on three nodes of a 30-node mesh behind one /128, announced
by the real anycast agent while the local etcd is healthy. One lab for the module."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address

import pytest

from lab.netns import Lab
from lab.stack import (
    etcd_answering,
    etcd_anycast_url,
    etcd_members,
    pick_client,
    ranked,
    spread,
)
from mesh.topology import parse
from tests.lab.conftest import LabFactory

pytestmark = pytest.mark.lab

SPEC = "random:30:4"


@dataclass(frozen=True)
class Setup:
    lab: Lab
    members: list[int]  # nodes running etcd
    ids: dict[int, int]  # etcd member id -> node
    client: int  # a node with a single nearest member, and a single next nearest
    nearest: int
    next_nearest: int


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def setup(make_module_lab: LabFactory) -> Setup:
    members = spread(parse(SPEC), 3)
    lab = make_module_lab(SPEC, agent=True, services={"etcd": members})
    topo = lab.state.topology
    client, x, y = pick_client(topo, members)
    # Every instance healthy: each member answers on the anycast address itself.
    wait_for("etcd to answer on every member", lambda: all(
        etcd_answering(lab, m) is not None for m in members), timeout=60)
    names = etcd_members(lab, members[0])
    ids = {i: int(name.removeprefix("n")) for i, name in names.items()}
    assert sorted(ids.values()) == sorted(members)
    return Setup(lab, members, ids, client, x, y)


def answered_by(s: Setup, node: int, tries: int = 1) -> int | None:
    """The node whose etcd answers `node` at the anycast address. With tries > 1, a
    failed attempt (a busy machine can miss etcdctl's 2 s timeout) is made again."""
    for _ in range(tries):
        member = etcd_answering(s.lab, node)
        if member is not None:
            return s.ids[member]
    return None


def anycast_on_lo(s: Setup, node: int) -> bool:
    n = s.lab.node(node)
    out = s.lab.exec(node, ["ip", "-6", "-j", "addr", "show", "dev", "lo"]).stdout
    addrs = {IPv6Address(a["local"]) for link in json.loads(out) for a in link["addr_info"]}
    return s.lab.site.anycast["etcd"] in addrs and n.index in s.members


def test_every_node_reaches_its_nearest_etcd(setup: Setup) -> None:
    s = setup
    topo = s.lab.state.topology
    nodes = list(range(1, topo.nodes + 1))
    wrong: list[str] = []

    def all_nearest() -> bool:
        # A fresh etcd cluster elects its leader again now and then in its first
        # seconds; a member without one is unhealthy and withdraws its address until
        # it is back. So: every node answered by its nearest member once that settles.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = dict(zip(nodes, pool.map(lambda n: answered_by(s, n, tries=3), nodes),
                               strict=True))
        wrong.clear()
        for n, member in answers.items():
            r = ranked(topo, n, s.members)
            nearest = {m for d, m in r if d == r[0][0]}  # ECMP may pick any of a tie
            if member not in nearest:
                wrong.append(f"n{n} answered by {f'n{member}' if member else 'nobody'}, "
                             f"nearest are {nearest}")
        return not wrong

    try:
        wait_for("every node answered by its nearest etcd", all_nearest, timeout=60)
    except pytest.fail.Exception:
        pytest.fail("not every node is answered by its nearest etcd member:\n"
                    + "\n".join(wrong))
    # Real etcd behind the address: written from one node, read from another.
    url = etcd_anycast_url(s.lab)
    s.lab.exec(nodes[-1], ["etcdctl", "--endpoints", url, "put", "kubermesh", s.lab.name])
    got = s.lab.exec(nodes[0], ["etcdctl", "--endpoints", url, "get", "--print-value-only",
                                "kubermesh"]).stdout.strip()
    assert got == s.lab.name


def test_stopped_etcd_moves_its_clients_to_the_next_nearest(setup: Setup) -> None:
    s = setup
    assert answered_by(s, s.client, tries=3) == s.nearest
    s.lab.stop_agent(s.nearest, "etcd")
    try:
        wait_for(f"n{s.client} to be answered by n{s.next_nearest}",
                 lambda: answered_by(s, s.client) == s.next_nearest, timeout=20)
        assert not anycast_on_lo(s, s.nearest)  # withdrawn, not just unreachable
    finally:
        s.lab.start_agent(s.nearest, "etcd")
    wait_for(f"n{s.client} to be answered by n{s.nearest} again",
             lambda: answered_by(s, s.client) == s.nearest, timeout=60)
    assert anycast_on_lo(s, s.nearest)


def test_dead_node_moves_its_clients_to_the_next_nearest(setup: Setup) -> None:
    s = setup
    assert answered_by(s, s.client, tries=3) == s.nearest
    s.lab.kill(s.nearest)
    try:
        wait_for(f"n{s.client} to be answered by n{s.next_nearest}",
                 lambda: answered_by(s, s.client) == s.next_nearest, timeout=20)
    finally:
        s.lab.revive(s.nearest)
    s.lab.wait_converged(timeout=60)
    wait_for(f"n{s.client} to be answered by the revived n{s.nearest}",
             lambda: answered_by(s, s.client) == s.nearest, timeout=60)


def test_status_shows_anycast_and_wait_orders_on_stages(setup: Setup) -> None:
    s = setup
    status_file = s.lab.status_file(s.client)
    st = json.loads(status_file.read_text())
    assert {a["service"]: a["state"] for a in st["anycast"]} == {
        "etcd": "routed", "apiserver": "unreachable"}, st["anycast"]
    member = json.loads(s.lab.status_file(s.nearest).read_text())
    assert {a["service"]: a["state"] for a in member["anycast"]}["etcd"] == "local"

    def wait(stage: str, timeout: int) -> tuple[float, subprocess.CompletedProcess[str]]:
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "kubermesh.cli", "wait", "--stage", stage,
                            "--file", str(status_file), "--timeout", str(timeout)],
                           capture_output=True, text=True, timeout=timeout + 30, check=False)
        return time.monotonic() - start, r

    took, r = wait("overlay", 30)
    assert r.returncode == 0 and "stage overlay reached" in r.stderr and took < 10, r.stderr
    # Nobody serves the apiserver here: it gives up after its timeout, and says so.
    took, r = wait("anycast", 2)
    assert r.returncode == 1 and "stage anycast not reached after 2 s" in r.stderr, r.stderr
    assert took >= 2
