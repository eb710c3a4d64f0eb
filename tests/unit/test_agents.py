"""The overlay's and anycast's pure parts (route next hops, desired IPv4 routes,
which claims count, health hysteresis, probe URLs, services) and the anycast
controller with real probes against local servers."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from firstboot.anycast import Anycast, Hysteresis, Probe, Service, parse_services
from firstboot.overlay import NextHop, desired_routes, route_hops, valid_claims
from mesh import pods
from mesh.pods import BlockClaim
from mesh.site import PodSettings
from tests.unit.fakes import Kernel, Msg, new_site

ULA = IPv6Network("fd12:3456:789a::/48")
GW1, GW2 = "fe80::1", "fe80::2"
B1, B2 = IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")


def msg(attrs: list[tuple[str, Any]], oif: int | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"attrs": attrs}
    if oif is not None:
        m["oif"] = oif
    return m


def test_route_hops_single_multipath_and_via_inet6() -> None:
    single = msg([("RTA_GATEWAY", GW1), ("RTA_OIF", 3)])
    assert route_hops(single) == (NextHop(IPv6Address(GW1), 3),)
    multi = msg([("RTA_MULTIPATH", [msg([("RTA_GATEWAY", GW2)], oif=4),
                                    msg([("RTA_GATEWAY", GW1)], oif=3)])])
    assert route_hops(multi) == (NextHop(IPv6Address(GW1), 3), NextHop(IPv6Address(GW2), 4))
    via = msg([("RTA_MULTIPATH", [msg([("RTA_VIA", {"family": socket.AF_INET6,
                                                     "addr": GW2})], oif=4)])])
    assert route_hops(via) == (NextHop(IPv6Address(GW2), 4),)
    assert route_hops(msg([("RTA_OIF", 3)])) == ()  # a connected route: no gateway
    # pyroute2's messages (get_attr) as well as plain dicts.
    assert route_hops(Msg(attrs=[("RTA_GATEWAY", GW1), ("RTA_OIF", 3)])) == (
        NextHop(IPv6Address(GW1), 3),)


def test_desired_routes_follow_the_keepers_claim_and_skip_unrouted_ones() -> None:
    keeper = BlockClaim(B1, IPv4Address("10.0.0.1"))
    loser = BlockClaim(B1, IPv4Address("10.0.0.9"))
    other = BlockClaim(B2, IPv4Address("10.0.0.5"))
    claims = {pods.claim_address(ULA, c): c for c in (keeper, loser, other)}
    h1 = (NextHop(IPv6Address(GW1), 3), NextHop(IPv6Address(GW2), 4))
    h2 = (NextHop(IPv6Address(GW2), 4),)
    hops = {pods.claim_address(ULA, keeper): h1, pods.claim_address(ULA, loser): h2,
            pods.claim_address(ULA, other): ()}
    assert desired_routes(claims, hops, mine=None) == {B1: h1}
    hops[pods.claim_address(ULA, other)] = h2
    assert desired_routes(claims, hops, mine=B2) == {B1: h1}  # never a route to our own


def test_a_claim_counts_only_when_its_owner_advertises_it() -> None:
    pod_range = PodSettings(IPv4Network("10.244.0.0/22"), 24)  # four blocks
    victim_id, victim_rid = "00112233aabbccdd", IPv4Address("10.0.0.5")
    held = pods.choose_block(victim_id, victim_rid, pod_range, [], None)
    honest = BlockClaim(B1 if held != B1 else B2, IPv4Address("10.0.0.1"))
    # 10.0.0.9 announces a claim on the victim's block embedding a lower router-id.
    forged = BlockClaim(held, IPv4Address("10.0.0.2"))
    pending = BlockClaim(IPv4Network("10.244.3.0/24"), IPv4Address("10.0.0.3"))
    both = BlockClaim(IPv4Network("10.244.0.0/24"), IPv4Address("10.0.0.4"))
    a = {c: pods.claim_address(ULA, c) for c in (honest, forged, pending, both)}
    advertisers = {a[honest]: frozenset({"10.0.0.1"}), a[forged]: frozenset({"10.0.0.9"}),
                   a[both]: frozenset({"10.0.0.4", "10.0.0.8"})}
    counted, fake = valid_claims({addr: c for c, addr in a.items()}, advertisers)
    assert counted == {a[honest]: honest, a[both]: both}
    assert fake == {a[forged]: forged}  # not yet in the view (pending): neither
    # The forged claim evicts nothing; counted, it would have.
    assert pods.choose_block(victim_id, victim_rid, pod_range, counted.values(), held) == held
    assert pods.choose_block(victim_id, victim_rid, pod_range, [forged], held) != held


def test_hysteresis_rises_and_falls_only_after_runs() -> None:
    h = Hysteresis(rise=2, fall=3)
    assert [h.update(ok) for ok in [True, False, True, True]] == [False, False, False, True]
    assert [h.update(ok) for ok in [False, False, True, False, False, False]] == [
        True, True, True, True, True, False]
    assert Hysteresis(1, 1, healthy=True).update(False) is False
    with pytest.raises(ValueError, match="at least 1"):
        Hysteresis(0, 1)


def test_probe_urls() -> None:
    assert Probe.parse("http://[fd00::1]:2379/health") == Probe("http", "fd00::1", 2379,
                                                                "/health")
    assert Probe.parse("https://[fd00::1]/healthz").port == 443
    assert Probe.parse("http://localhost").path == "/"
    assert str(Probe.parse("tcp://[fd00::1]:6443")) == "tcp://[fd00::1]:6443"
    assert str(Probe.parse("http://127.0.0.1:80/x")) == "http://127.0.0.1:80/x"
    for bad, why in (("ftp://x:1", "expected http://, https:// or tcp://HOST:PORT"),
                     ("http://", "expected http://"),
                     ("tcp://[fd00::1]", "a tcp:// probe needs a port")):
        with pytest.raises(ValueError, match=why):
            Probe.parse(bad)


def test_services_must_be_the_sites() -> None:
    site = new_site()
    (svc,) = parse_services(site, ["etcd=http://[fd00::1]:2379/health"])
    assert svc == Service("etcd", site.anycast["etcd"], Probe("http", "fd00::1", 2379,
                                                               "/health"))
    assert parse_services(site, []) == []
    with pytest.raises(ValueError, match=r"no anycast address for 'dns' \(it has apiserver, "
                                         r"etcd\)"):
        parse_services(site, ["dns=tcp://[fd00::1]:53"])
    with pytest.raises(ValueError, match="expected name=probe-URL"):
        parse_services(site, ["etcd"])
    with pytest.raises(ValueError, match="tcp:// probe needs a port"):
        parse_services(site, ["etcd=tcp://[::1]"])


class Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    t = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_probes_check_http_status_and_tcp_connect(http_server: http.server.HTTPServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    port = http_server.server_address[1]
    probe = Probe.parse(f"http://127.0.0.1:{port}/health")
    assert probe.check(1.0) is None
    monkeypatch.setattr(Answer, "status", 503)
    assert probe.check(1.0) == "HTTP 503"
    assert Probe.parse(f"tcp://127.0.0.1:{port}").check(1.0) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert Probe.parse(f"tcp://127.0.0.1:{free}").check(1.0)  # refused: says why


def test_a_service_not_run_here_is_not_announced_whatever_answers(tmp_path: Path) -> None:
    """An apiserver of another process on the port, or none: while this node runs no
    control plane (`runs` False) nothing is probed and nothing announced."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    (svc,) = parse_services(new_site(), [f"etcd=tcp://127.0.0.1:{listener.getsockname()[1]}"])
    running = threading.Event()
    posted = threading.Event()
    a = Anycast([dataclasses.replace(svc, runs=running.is_set)], Kernel(),
                lambda _: posted.set(), interval=0.01, rise=2, fall=2)
    try:
        time.sleep(0.2)
        assert not posted.is_set() and a.reconcile() is False and a.announced == frozenset()
        assert a.last_error["etcd"] == "not run on this node"
        running.set()
        assert posted.wait(5), "the probe never said healthy once the service ran"
        assert a.reconcile() is True and a.announced == {svc.address}
    finally:
        listener.close()
        a.close()


def test_anycast_follows_health_and_withdraws_on_close(tmp_path: Path) -> None:
    site = new_site()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    (svc,) = parse_services(site, [f"etcd=tcp://127.0.0.1:{port}"])
    kernel = Kernel()
    posted = threading.Event()

    def post(name: str) -> None:
        assert name == "anycast"
        posted.set()

    a = Anycast([svc], kernel, post, interval=0.01, rise=2, fall=2)
    try:
        assert a.reconcile() is False and kernel.addrs == set()
        assert posted.wait(5), "the probe never said healthy"
        posted.clear()
        assert a.reconcile() is True
        assert kernel.addrs == {(str(svc.address), 128)} and a.announced == {svc.address}
        kernel.addrs.discard((str(svc.address), 128))  # removed by hand: put back
        assert a.reconcile() is False and (str(svc.address), 128) in kernel.addrs
        listener.close()
        assert posted.wait(5), "the probe never said unhealthy"
        assert a.reconcile() is True and kernel.addrs == set()
    finally:
        listener.close()
        a.close()


def test_a_restarted_anycast_keeps_what_lo_has_and_close_withdraws_it() -> None:
    site = new_site()
    (svc,) = parse_services(site, ["etcd=tcp://127.0.0.1:9"])  # nothing listens
    kernel = Kernel()
    kernel.addrs.add((str(svc.address), 128))
    a = Anycast([svc], kernel, lambda _: None, interval=60.0)
    try:
        assert a.states() == {"etcd": True}  # one failed probe is no fall
        assert a.desired() == {svc.address}
    finally:
        a.close()
    assert kernel.addrs == set()
