"""Service names as the cluster DNS answers them."""

from __future__ import annotations

from ipaddress import IPv4Address

from dnslib import QTYPE, RCODE, DNSRecord

from mesh import clusterdns

SERVICES = [
    {"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.20"}},
    {"metadata": {"name": "db", "namespace": "shop"}, "spec": {"clusterIP": "None"}},
]
ENDPOINTS = [{"metadata": {"name": "db", "namespace": "shop"},
              "subsets": [{"addresses": [{"ip": "10.244.5.7"}, {"ip": "10.244.3.9"}]}]}]


def ask(name: str, qtype: str = "A") -> DNSRecord:
    recs = clusterdns.records(SERVICES, ENDPOINTS)
    return DNSRecord.parse(clusterdns.answer(bytes(DNSRecord.question(name, qtype).pack()),
                                             recs))


def test_records() -> None:
    recs = clusterdns.records(SERVICES, ENDPOINTS)
    assert recs.names == {
        "web.default.svc.cluster.local": (IPv4Address("10.96.0.20"),),
        "db.shop.svc.cluster.local": (IPv4Address("10.244.3.9"), IPv4Address("10.244.5.7")),
    }


def test_a_service_resolves_to_its_cluster_ip() -> None:
    r = ask("web.default.svc.cluster.local")
    assert r.header.rcode == RCODE.NOERROR and r.header.aa
    assert [(str(a.rdata), a.ttl) for a in r.rr] == [("10.96.0.20", clusterdns.TTL)]


def test_a_headless_service_resolves_to_its_endpoints() -> None:
    assert sorted(str(a.rdata) for a in ask("DB.shop.svc.cluster.local.").rr) == [
        "10.244.3.9", "10.244.5.7"]


def test_unknown_names_and_other_types() -> None:
    assert ask("nope.default.svc.cluster.local").header.rcode == RCODE.NXDOMAIN
    r = ask("web.default.svc.cluster.local", "AAAA")
    assert r.header.rcode == RCODE.NOERROR and not r.rr  # the name exists: no IPv6
    assert ask("example.com").header.rcode == RCODE.REFUSED
    assert ask("web.default.svc.cluster.local", "MX").q.qtype == QTYPE.MX
