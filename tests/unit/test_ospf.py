"""ospf6d's view (parsed from FRR 8.4's answers), the controller that asks for it,
identity conflicts found in it, and the vty protocol it is asked over."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from firstboot import ospf as ospf_mod
from firstboot.node import Links
from firstboot.ospf import Conflicts, Neighbour, Ospf, OspfView, parse_view, spf_tree_routers
from firstboot.vty import Vty, VtyError
from tests.unit.fakes import Msg, fake_nic, idle_ospf, node_config, route_msg

ME = "10.0.0.5"

# `show ipv6 ospf6 neighbor json`
NEIGHBOURS = {"neighbors": [
    {"neighborId": "10.0.0.2", "priority": 1, "deadTime": "00:00:02", "state": "Full",
     "ifState": "PointToPoint", "interfaceName": "enp1s0", "interfaceState": "PointToPoint"},
    {"neighborId": "10.0.0.3", "priority": 1, "deadTime": "00:00:03", "state": "ExStart",
     "ifState": "PointToPoint", "interfaceName": "enp2s0", "interfaceState": "PointToPoint"},
]}


def router_lsa(adv: str, seq: int, payload: str) -> dict[str, Any]:
    """One line of `show ipv6 ospf6 database router json`: one per link of the LSA."""
    return {"type": "Rtr", "lsId": "0.0.0.0", "advRouter": adv, "age": 12, "seqNum": seq,
            "payload": payload}


ROUTERS = {"areaScopedLinkStateDb": [{"areaId": "0.0.0.0", "lsa": [
    router_lsa(ME, 0x80000007, "10.0.0.2/0.0.0.4"),
    router_lsa(ME, 0x80000007, "10.0.0.3/0.0.0.5"),
    router_lsa("10.0.0.2", 0x80000003, f"{ME}/0.0.0.3"),  # a link back to this node
    router_lsa("10.0.0.2", 0x80000003, "10.0.0.7/0.0.0.3"),
    router_lsa("10.0.0.7", 0x80000002, "10.0.0.2/0.0.0.4"),
    router_lsa("10.0.0.9", 0x80000011, f"{ME}/0.0.0.9"),  # dead: not reached by SPF
]}]}

# `show ipv6 ospf6 spf tree`
SPF_TREE = (f"+-{ME} [0]\n"
            "   +-10.0.0.2 [10]\n"
            "      +-10.0.0.7 [20]\n")

# `show ipv6 ospf6 database intra-prefix detail json`
PREFIXES = {"areaScopedLinkStateDb": [{"areaId": "0", "lsa": [
    {"type": "Intra-Prefix", "advertisingRouter": "147.198.64.98", "prefix": [
        {"prefix": "fd01:c9ae:876e:0:a4bd:b7ee:fe5:4ecd/128", "metric": 10},
        {"prefix": "fd01:c9ae:876e:2:a00:100:a00:1/128", "metric": 10}]},
    {"type": "Intra-Prefix", "advertisingRouter": "10.0.0.2", "prefix": [
        {"prefix": "fd01:c9ae:876e:2:a00:100:a00:1/128", "metric": 0},  # two advertisers
        {"prefix": "fd01:c9ae:876e:1::/64", "metric": 10},  # not a /128: no claim
        {"prefix": "garbage", "metric": 10}]},
]}]}


def test_spf_tree_routers() -> None:
    tree = ("+-217.12.200.96 [0]\n"
            "   +-89.195.106.186 [100]\n"
            "   |  +-130.25.188.211 [200]\n"
            "   |     +-15.127.174.86 [300]\n"
            "   +-212.154.56.88 [100]\n"
            "      +-216.89.78.69 [200]\n")
    assert spf_tree_routers(tree) == {
        "217.12.200.96", "89.195.106.186", "130.25.188.211", "15.127.174.86",
        "212.154.56.88", "216.89.78.69"}
    assert spf_tree_routers("") == set()


def test_parse_view_of_frr_84_answers() -> None:
    v = parse_view(ME, NEIGHBOURS, ROUTERS, SPF_TREE, PREFIXES)
    assert v.neighbours == {"enp1s0": Neighbour("10.0.0.2", "Full"),
                            "enp2s0": Neighbour("10.0.0.3", "ExStart")}
    assert v.full_links == {"enp1s0"}
    assert v.reachable == {"10.0.0.2", "10.0.0.7"}  # not this node itself
    assert v.in_db == {"10.0.0.2", "10.0.0.7", "10.0.0.9"}
    assert v.unreachable == {"10.0.0.9"}
    assert v.own_seq == 0x80000007
    # Only reachable routers count: a dead one's LSA lingers for an hour.
    assert v.claim_me == {"10.0.0.2"}
    assert v.advertisers == {
        IPv6Address("fd01:c9ae:876e:0:a4bd:b7ee:fe5:4ecd"): {"147.198.64.98"},
        IPv6Address("fd01:c9ae:876e:2:a00:100:a00:1"): {"147.198.64.98", "10.0.0.2"},
    }
    # Cables that both ends list: ME-10.0.0.2 and 10.0.0.2-10.0.0.7; ME lists 10.0.0.3,
    # which lists nothing back; 10.0.0.9 lists ME, which does not list it.
    assert v.links == {("10.0.0.2", "10.0.0.7"), ("10.0.0.2", ME)}  # lower id first


def test_parse_view_of_an_ospf6d_with_nothing_yet() -> None:
    v = parse_view(ME, {}, {}, "", {})
    assert v == OspfView()
    assert v.own_seq is None and v.full_links == frozenset() and v.unreachable == frozenset()


class CannedVty(Vty):
    """ospf6d's answers from a dict; VtyError when `down`."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__(Path("/nonexistent"))
        self.answers = answers
        self.down = False
        self.asked: list[str] = []

    def command(self, daemon: str, command: str) -> str:
        assert daemon == "ospf6d"
        self.asked.append(command)
        if self.down:
            raise VtyError("ospf6d: connection refused")
        return self.answers[command]


def test_the_ospf_controller_reads_the_view_and_reports_changes(tmp_path: Path) -> None:
    cfg = node_config(tmp_path)
    me = str(cfg.node.router_id)
    vty = CannedVty({
        "show ipv6 ospf6 neighbor json": json.dumps(NEIGHBOURS),
        "show ipv6 ospf6 database router json": json.dumps(ROUTERS).replace(ME, me),
        "show ipv6 ospf6 spf tree": SPF_TREE.replace(ME, me),
        "show ipv6 ospf6 database intra-prefix detail json": json.dumps(PREFIXES),
    })
    o = Ospf(cfg, vty, Links(cfg))
    assert o.reconcile() is True
    assert o.view.reachable == {"10.0.0.2", "10.0.0.7"} and o.view.own_seq == 0x80000007
    assert o.reconcile() is False
    vty.answers["show ipv6 ospf6 neighbor json"] = ""  # ospf6d says nothing: no neighbours
    assert o.reconcile() is True and o.view.neighbours == {}
    vty.down = True
    with pytest.raises(RuntimeError, match="ospf6d does not answer: "):
        o.reconcile()
    assert o.view == OspfView()  # nothing known while it is down
    with pytest.raises(RuntimeError, match="ospf6d does not answer: "):
        o.reconcile()
    # Before FRR has ever answered (it starts after the runtime's first pass at
    # boot), its silence is no error.
    fresh = Ospf(cfg, vty, Links(cfg))
    assert fresh.reconcile() is False and fresh.view == OspfView()


def test_an_adjacency_stuck_on_its_way_to_full_is_reset(tmp_path: Path, clock: Clock) -> None:
    """ospf6d 8.4 can leave a slave in ExChange for good while its master is Full:
    after ten dead intervals (60 s at least) in one state short of Full, the
    interface is reset, and again no sooner than that. A neighbour that moves on
    (ExStart -> ExChange: slow progress) starts the wait again; one that gets to
    Full is forgotten; a reset that fails is logged, and the pass's reading stands."""
    cfg = node_config(tmp_path)
    states = {"m1": "ExChange", "m2": "Full", "m3": "ExStart"}
    clears: list[str] = []

    class StuckVty(CannedVty):
        failing = False

        def command(self, daemon: str, command: str) -> str:
            if command.startswith("clear"):
                clears.append(command.rsplit(" ", 1)[1])
                if self.failing:
                    raise VtyError("ospf6d: `clear` failed (1): % no")
                return ""
            self.answers["show ipv6 ospf6 neighbor json"] = json.dumps({"neighbors": [
                {"neighborId": f"10.0.0.{i}", "state": st, "interfaceName": name}
                for i, (name, st) in enumerate(states.items(), 1)]})
            return super().command(daemon, command)

    vty = StuckVty({
        "show ipv6 ospf6 database router json": "{}", "show ipv6 ospf6 spf tree": "",
        "show ipv6 ospf6 database intra-prefix detail json": "{}", "enable": ""})
    o = Ospf(cfg, vty, Links(cfg))
    wait = o.stuck_after
    assert wait == max(60.0, 10 * cfg.site.mesh.dead_interval)
    o.reconcile()
    clock.now += wait - 1
    states["m3"] = "ExChange"  # slow, but it moved on: its wait starts again
    o.reconcile()
    assert clears == []
    clock.now += 1
    o.reconcile()
    assert clears == ["m1"] and o.resets == 1
    assert vty.asked[-1] == "enable"  # `clear` needs the enable node
    clock.now += wait - 1  # m1 still stuck, but just reset: not again yet
    o.reconcile()
    assert clears == ["m1", "m3"]  # m3's wait, begun in ExChange, is over
    clock.now += 1
    vty.failing = True
    assert o.reconcile() is False  # the reading stands; the failure is logged
    assert clears == ["m1", "m3", "m1"] and o.resets == 3
    states["m1"] = states["m3"] = "Full"
    o.reconcile()
    assert o.exchanging == {}
    states["m1"] = "ExStart"
    o.reconcile()
    vty.down = True  # ospf6d gone: its adjacencies start again with it
    with pytest.raises(RuntimeError):
        o.reconcile()
    assert o.exchanging == {}


def test_ospf_routes_wake_it_while_a_mesh_link_is_not_full(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    fake_nic(sysfs, "enp1s0", "52:54:00:00:00:01")
    fake_nic(sysfs, "enp2s0", "52:54:00:00:00:02")
    cfg = node_config(tmp_path)
    links = Links(cfg)
    links.reconcile()
    o = Ospf(cfg, CannedVty({}), links)
    new_route = route_msg("fd00::7", [("fe80::1", 2)])
    o.view = OspfView(neighbours={"enp1s0": Neighbour("10.0.0.2", "Full")})
    assert o.wants(new_route)  # enp2s0's neighbour may just have gone Full
    assert not o.wants(route_msg("fd00::7", [("fe80::1", 2)], proto=2))  # not OSPF's
    assert not o.wants(Msg(new_route, event="RTM_DELROUTE"))
    o.view = OspfView(neighbours={"enp1s0": Neighbour("10.0.0.2", "Full"),
                                  "enp2s0": Neighbour("10.0.0.3", "Full")})
    assert not o.wants(new_route)  # every link Full: its period is enough


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(ospf_mod, "time", SimpleNamespace(monotonic=c.monotonic))
    return c


def conflicts(tmp_path: Path) -> tuple[Conflicts, Ospf]:
    cfg = node_config(tmp_path)
    o = idle_ospf(cfg, tmp_path)
    return Conflicts(cfg, o), o


def test_an_lsa_war_is_a_conflict_held_after_its_evidence(
        tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kubermesh")
    c, o = conflicts(tmp_path)
    seq = 0x80000001
    for _ in range(10):  # a sane mesh: its own LSA now and then
        o.view = OspfView(own_seq=seq)
        assert c.reconcile() is False and c.conflicts == ()
        clock.now += 2
        seq += 1
    # Another node with this router-id: the LSA re-originated again and again.
    for _ in range(4):
        seq += 25
        o.view = OspfView(own_seq=seq)
        c.reconcile()
        clock.now += 2
    assert len(c.conflicts) == 1
    assert "another node uses router-id 10.0.0.5" in c.conflicts[0]
    assert "re-originated" in c.conflicts[0] and "mac:52:54:00:00:00:01" in c.conflicts[0]
    assert caplog.text.count("CONFLICT") == 1
    # The war stops (the twin left): reported while the window still shows it, then
    # held for CONFLICT_HOLD after the last evidence, then over.
    stopped = clock.now
    ended = None
    while ended is None and clock.now < stopped + 300:
        o.view = OspfView(own_seq=seq)
        c.reconcile()
        if not c.conflicts:
            ended = clock.now
        clock.now += 2
    assert ended is not None
    assert stopped + ospf_mod.CONFLICT_HOLD <= ended
    assert ended <= stopped + ospf_mod.LSA_WAR_WINDOW + ospf_mod.CONFLICT_HOLD + 2
    assert caplog.text.count("CONFLICT") == 1  # said when it starts, not as it evolves
    assert "identity conflict over" in caplog.text


def test_a_phantom_link_is_a_conflict_when_seen_in_most_rounds(tmp_path: Path,
                                                                clock: Clock) -> None:
    c, o = conflicts(tmp_path)
    neighbour = {"enp1s0": Neighbour("10.0.0.2", "Full")}
    # A real adjacency listed back: no phantom.
    for _ in range(20):
        o.view = OspfView(neighbours=neighbour, claim_me=frozenset({"10.0.0.2"}))
        assert c.reconcile() is False
        clock.now += 2
    # 10.0.0.8 lists a link to this router-id, but is no neighbour of this node;
    # seen now and then (a dead interval's leftover) it is nothing.
    for i in range(20):
        o.view = OspfView(neighbours=neighbour,
                          claim_me=frozenset({"10.0.0.2", "10.0.0.8"} if i % 4 == 0
                                             else {"10.0.0.2"}))
        c.reconcile()
        assert c.conflicts == ()
        clock.now += 2
    # Seen round after round: someone else holds this router-id.
    found = None
    for i in range(20):
        o.view = OspfView(neighbours=neighbour, claim_me=frozenset({"10.0.0.2", "10.0.0.8"}))
        if c.reconcile():
            found = i
            break
        clock.now += 2
    assert found is not None and 4 <= found < 16
    (text,) = c.conflicts
    assert "10.0.0.8 lists a link to it that this node does not have" in text
    # Gone: held, then over.
    o.view = OspfView(neighbours=neighbour, claim_me=frozenset({"10.0.0.2"}))
    ended = None
    for _ in range(100):
        clock.now += 2
        if c.reconcile():
            ended = clock.now
            break
    assert ended is not None and c.conflicts == ()


def test_a_restarted_runtime_keeps_reporting_a_conflict(tmp_path: Path, clock: Clock) -> None:
    c, _ = conflicts(tmp_path)
    c.resume(("another node uses router-id 10.0.0.5",))
    assert c.conflicts == ("another node uses router-id 10.0.0.5",)
    assert c.reconcile() is False and c.conflicts
    clock.now += ospf_mod.CONFLICT_HOLD + 1
    assert c.reconcile() is True and not c.conflicts
    c.resume(())
    assert not c.conflicts


@pytest.fixture
def vty_server(tmp_path: Path) -> Iterator[tuple[Path, list[str], dict[str, bytes]]]:
    """A daemon's vty socket at tmp_path/ospf6d.vty: each command (NUL-terminated)
    is answered from `replies` (default: the command echoed, status 0)."""
    path = tmp_path / "ospf6d.vty"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen()
    seen: list[str] = []
    replies: dict[str, bytes] = {}

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                    while b"\0" in buf:
                        cmd, buf = buf.split(b"\0", 1)
                        seen.append(cmd.decode())
                        if cmd == b"hang up":
                            conn.close()
                            break
                        conn.sendall(replies.get(cmd.decode(), cmd + b"\n\0\0\0\0"))
                    if conn.fileno() < 0:
                        break

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield tmp_path, seen, replies
    srv.close()


def test_vty_speaks_frrs_protocol(vty_server: tuple[Path, list[str], dict[str, bytes]]) -> None:
    rundir, seen, replies = vty_server
    vty = Vty(rundir, timeout=2)
    try:
        assert vty.command("ospf6d", "show version") == "show version\n"
        assert vty.up("ospf6d") and not vty.up("zebra")  # no zebra.vty
        replies["show x json"] = b'{"a": 1}\0\0\0\0'
        assert vty.json("ospf6d", "show x json") == {"a": 1}
        replies["show empty json"] = b"\0\0\0\0"
        assert vty.json("ospf6d", "show empty json") == {}
        replies["bad"] = b"% Unknown command\0\0\0\1"
        with pytest.raises(VtyError, match=r"`bad` failed \(1\): % Unknown command"):
            vty.command("ospf6d", "bad")
        assert vty.json("ospf6d", "bad") == {}
        with pytest.raises(VtyError, match="connection closed"):
            vty.command("ospf6d", "hang up")
        # The next command connects again.
        assert vty.command("ospf6d", "show version") == "show version\n"
        assert seen.count("show version") == 3
    finally:
        vty.close()
