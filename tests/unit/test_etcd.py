"""etcd on the slot holders: its configuration (mesh.etcd), and the member's
choices (firstboot.etcd): found the cluster once every slot is held, join a
running one replacing a gone holder's member, run nothing without a slot."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from firstboot import etcd as etcd_mod
from firstboot.controlplane import Slots
from firstboot.etcd import Etcd
from firstboot.ospf import OspfView
from firstboot.overlay import Routes
from firstboot.services import environment_file
from mesh import etcd, plan
from mesh.controlplane import SlotClaim
from tests.unit.fakes import Kernel, idle_ospf, node_config

A = etcd.Member("km-aaaaaaaaaaaa", IPv6Address("fd00:1::aaaa:aaaa:aaaa:aaaa"))


def test_the_members_configuration() -> None:
    env = etcd.environment(A, {A.name: A.peer_url, "km-b": "http://[fd00:1::b]:2380"}, "new",
                           Path("/var/lib/kubermesh/etcd"), "kubermesh-w1")
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "http://[fd00:1::aaaa:aaaa:aaaa:aaaa]:2379"
    assert env["ETCD_INITIAL_CLUSTER"] == (
        "km-aaaaaaaaaaaa=http://[fd00:1::aaaa:aaaa:aaaa:aaaa]:2380,km-b=http://[fd00:1::b]:2380")
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    assert (env["ETCD_HEARTBEAT_INTERVAL"], env["ETCD_ELECTION_TIMEOUT"]) == ("500", "5000")
    fast = etcd.environment(A, {A.name: A.peer_url}, "new", Path("/d"), "t", 100, 1000)
    assert (fast["ETCD_HEARTBEAT_INTERVAL"], fast["ETCD_ELECTION_TIMEOUT"]) == ("100", "1000")
    assert "ETCD_NAME=km-aaaaaaaaaaaa\n" in environment_file(env)
    with pytest.raises(ValueError, match="not in the initial cluster"):
        etcd.environment(A, {"km-b": "x"}, "new", Path("/d"), "t")
    with pytest.raises(ValueError, match="not new or existing"):
        etcd.environment(A, {A.name: A.peer_url}, "old", Path("/d"), "t")


class FakeRunner:
    def __init__(self) -> None:
        self.env: dict[str, str] | None = None
        self.stopped = 0

    def running(self) -> bool:
        return self.env is not None

    def start(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)

    def stop(self) -> None:
        self.env = None
        self.stopped += 1

    def close(self) -> None:
        pass


def peer(addr: IPv6Address) -> str:
    return etcd.url(addr, etcd.PEER_PORT)


@pytest.fixture
def node(tmp_path: Path) -> tuple[Etcd, Slots, FakeRunner]:
    cfg = node_config(tmp_path, router_id=IPv4Address("10.0.0.1"))
    binary = tmp_path / "etcd"
    binary.touch()
    cfg = replace(cfg, paths=replace(cfg.paths, etcd_binary=binary))
    kernel = Kernel()
    ospf = idle_ospf(cfg, tmp_path)
    slots = Slots(cfg, kernel, Routes(cfg, kernel), ospf)
    runner = FakeRunner()
    return Etcd(cfg, slots, ospf, runner), slots, runner


def others(e: Etcd, slots: Slots, routers: dict[str, int]) -> dict[str, IPv6Address]:
    """Other holders: router-id -> slot; their loopbacks in the OSPF view."""
    loops = plan.loopback_subnet(e.cfg.site.mesh.ula).network_address
    lo = {r: IPv6Address(int(loops) | (0xb0 + i) << 56) for i, r in enumerate(routers)}
    e.ospf.view = OspfView(advertisers={a: frozenset({r}) for r, a in lo.items()})
    slots.claims = {IPv6Address(int(a)): SlotClaim(s, IPv4Address(r))
                    for (r, s), a in zip(routers.items(), lo.values(), strict=True)}
    return lo


def test_holders_found_the_cluster_together_once_every_slot_is_held(
        node: tuple[Etcd, Slots, FakeRunner], monkeypatch: pytest.MonkeyPatch) -> None:
    e, slots, runner = node
    monkeypatch.setattr(etcd_mod, "api", lambda *a, **k: (_ for _ in ()).throw(OSError("no")))
    monkeypatch.setattr(etcd_mod, "FOUND_AFTER", 0.0)  # the holders have settled
    e.reconcile()
    assert e.state == "no slot" and runner.env is None
    slots.slot = 0
    lo = others(e, slots, {"10.0.0.2": 1})
    e.reconcile()
    assert e.state == "waiting for every slot to be held (2 of 3)" and runner.env is None
    lo = others(e, slots, {"10.0.0.2": 1, "10.0.0.3": 2})
    e.reconcile()
    assert runner.env is not None and runner.env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    cluster = dict(x.split("=", 1) for x in runner.env["ETCD_INITIAL_CLUSTER"].split(","))
    assert sorted(cluster.values()) == sorted([e.me.peer_url, *(peer(a) for a in lo.values())])
    assert cluster[e.me.name] == e.me.peer_url
    assert (e.cfg.paths.etcd_data.stat().st_mode & 0o777) == 0o700
    # Without its slot (yielded), the member stops and its data goes.
    slots.slot = None
    slots.claims = {}
    e.reconcile()
    assert runner.stopped == 1 and not e.cfg.paths.etcd_data.exists() and e.state == "no slot"


def test_an_heir_replaces_the_gone_holders_member(
        node: tuple[Etcd, Slots, FakeRunner], monkeypatch: pytest.MonkeyPatch) -> None:
    e, slots, runner = node
    slots.slot = 1  # taken over from a holder that died
    lo = others(e, slots, {"10.0.0.2": 0, "10.0.0.3": 2})
    dead = "http://[fd00:9::dead]:2380"
    listed = [{"ID": "11", "name": "km-b", "peerURLs": [peer(lo["10.0.0.2"])]},
              {"ID": "12", "name": "km-dead", "peerURLs": [dead]},
              {"ID": "13", "name": "km-c", "peerURLs": [peer(lo["10.0.0.3"])]}]
    calls: list[tuple[str, str, Any]] = []

    def api(url: str, call: str, body: Any = None) -> Any:
        calls.append((url, call, body))
        if call == "cluster/member/list":
            return {"members": listed}
        if call == "cluster/member/remove":
            listed[:] = [x for x in listed if x["ID"] != body["ID"]]
            return {"members": listed}
        listed.append({"ID": "14", "peerURLs": body["peerURLs"]})  # added, not started: no name
        return {"members": listed}

    monkeypatch.setattr(etcd_mod, "api", api)
    e.reconcile()
    assert [c[1] for c in calls] == ["cluster/member/list", "cluster/member/remove",
                                     "cluster/member/add", "cluster/member/list"]
    assert calls[1][2] == {"ID": "12"} and calls[2][2] == {"peerURLs": [e.me.peer_url]}
    assert runner.env is not None and runner.env["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    cluster = dict(x.split("=", 1) for x in runner.env["ETCD_INITIAL_CLUSTER"].split(","))
    # Every member by the hostname its loopback gives, the new one (no name yet) too.
    assert cluster == {plan.hostname_of(a): peer(a) for a in lo.values()} | {
        e.me.name: e.me.peer_url}
    assert e.me.name == plan.hostname_of(e.cfg.node.loopback)
    assert dead not in runner.env["ETCD_INITIAL_CLUSTER"]


def holding_slot_0_with_a_started_member(e: Etcd, slots: Slots, mine_id: str
                                         ) -> tuple[dict[str, IPv6Address],
                                                    list[dict[str, Any]]]:
    """This node holds slot 0 with no data; the other two holders' loopbacks, and
    the cluster's members: a started one (named) under this node's own peer URL."""
    slots.slot = 0
    lo = others(e, slots, {"10.0.0.2": 1, "10.0.0.3": 2})
    return lo, [{"ID": mine_id, "name": e.me.name, "peerURLs": [e.me.peer_url]},
                {"ID": "22", "name": "x", "peerURLs": [peer(lo["10.0.0.2"])]},
                {"ID": "23", "name": "y", "peerURLs": [peer(lo["10.0.0.3"])]}]


def test_a_holder_whose_data_is_gone_is_removed_and_added_again(
        node: tuple[Etcd, Slots, FakeRunner], monkeypatch: pytest.MonkeyPatch) -> None:
    """A netbooted holder reboots within the grace with /var (its member data) gone:
    etcd refuses an empty log under an old member id, so it is re-added."""
    e, slots, runner = node
    _, listed = holding_slot_0_with_a_started_member(e, slots, "21")
    calls: list[tuple[str, Any]] = []

    def api(url: str, call: str, body: Any = None) -> Any:
        calls.append((call, body))
        if call == "cluster/member/remove":
            listed[:] = [x for x in listed if x["ID"] != body["ID"]]
        elif call == "cluster/member/add":
            listed.append({"ID": "24", "peerURLs": body["peerURLs"]})
        return {"members": listed}

    monkeypatch.setattr(etcd_mod, "api", api)
    monkeypatch.setattr(etcd_mod, "peer_active", lambda url, member: False)  # it is gone
    (e.cfg.paths.etcd_data / "member" / "snap").mkdir(parents=True)  # a failed start's
    e.reconcile()
    assert ("cluster/member/remove", {"ID": "21"}) in calls
    assert ("cluster/member/add", {"peerURLs": [e.me.peer_url]}) in calls
    assert runner.env is not None and runner.env["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert not (e.cfg.paths.etcd_data / "member" / "snap").exists()  # begun afresh


def test_a_twin_never_removes_the_running_member_of_its_double(
        node: tuple[Etcd, Slots, FakeRunner], monkeypatch: pytest.MonkeyPatch) -> None:
    """A PC with this node's identity (same loopback, so same peer URL) and no data
    finds a started member under its address that the cluster still talks to: it is
    its double's, alive. Nothing is removed or added, nothing starts, and it says why."""
    e, slots, runner = node
    lo, listed = holding_slot_0_with_a_started_member(e, slots, "185828541645115251")
    calls: list[str] = []

    def api(url: str, call: str, body: Any = None) -> Any:
        calls.append(call)
        return {"members": listed}

    metrics = ('# TYPE etcd_network_active_peers gauge\n'
               'etcd_network_active_peers{Local="16",Remote="2943212f5e2cf73"} 1\n'
               'etcd_network_active_peers{Local="16",Remote="17"} 0\n')

    class Reply(io.BytesIO):
        def __enter__(self) -> Reply:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(etcd_mod, "api", api)
    # Only c's member still talks to it: b's peer traffic to that address may be
    # routed to the twin, where nothing listens. One is enough to refuse.
    quiet = metrics.replace("} 1", "} 0")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Reply(
        (metrics if f"[{lo['10.0.0.3']}]" in url else quiet).encode()))
    with pytest.raises(RuntimeError, match="another PC has this node's identity"):
        e.reconcile()
    assert calls == ["cluster/member/list"] and runner.env is None
    assert etcd_mod.peer_active(f"http://[{lo['10.0.0.3']}]:2379", "185828541645115251")
    assert not etcd_mod.peer_active(f"http://[{lo['10.0.0.2']}]:2379", "185828541645115251")
    assert not etcd_mod.peer_active(f"http://[{lo['10.0.0.3']}]:2379", "23")


def test_a_candidate_announces_itself_and_counts_only_others_that_advertise_theirs(
        tmp_path: Path) -> None:
    from mesh import controlplane

    cfg = node_config(tmp_path, router_id=IPv4Address("10.0.0.9"))
    kernel = Kernel()
    ospf = idle_ospf(cfg, tmp_path)
    routes = Routes(cfg, kernel)
    slots = Slots(cfg, kernel, routes, ospf, candidate=True)
    ula = cfg.site.mesh.ula
    mine = controlplane.candidate_address(ula, IPv4Address("10.0.0.9"))
    theirs = controlplane.candidate_address(ula, IPv4Address("10.0.0.2"))
    forged = controlplane.candidate_address(ula, IPv4Address("10.0.0.3"))
    routes.table = {theirs: (), forged: ()}
    ospf.view = OspfView(advertisers={theirs: frozenset({"10.0.0.2"}),
                                      forged: frozenset({"10.0.0.4"})})
    slots.reconcile()
    assert (str(mine), 128) in kernel.addrs  # announced on lo, with or without a slot
    assert slots.candidates == frozenset({IPv4Address("10.0.0.2")})
    assert slots.report()["candidates"] == ["10.0.0.2", "10.0.0.9"]
