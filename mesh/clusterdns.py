"""Cluster DNS without CoreDNS: service names as the Kubernetes DNS specification
names them, answered on every node for its own pods.

CoreDNS is in no registry this project can reach, so each node answers itself,
at the cluster DNS address (mesh.kubelet.cluster_dns, which every pod's
resolv.conf names) held on its own `lo`: a pod's query goes to its node and no
further, like Kubernetes' NodeLocal DNSCache. The wire format is dnslib's (a
maintained library); what is answered is here:
- `<service>.<namespace>.svc.<domain>` A: the service's ClusterIP, or for a
  headless service the addresses of its ready endpoints;
- any other name under the cluster domain: NXDOMAIN, authoritatively;
- a name outside it: REFUSED (a mesh has no upstream resolver by design; a
  pod's search list tries the cluster names first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

DOMAIN = "cluster.local"
TTL = 5  # seconds: a re-created service's new address is seen at once


@dataclass(frozen=True)
class Records:
    """Name (lower case, no trailing dot) -> its IPv4 addresses."""

    names: Mapping[str, tuple[IPv4Address, ...]]

    def __len__(self) -> int:
        return len(self.names)


def records(services: Iterable[Mapping[str, Any]], endpoints: Iterable[Mapping[str, Any]],
            domain: str = DOMAIN) -> Records:
    """From the API's services and endpoints (camelCase dicts) to the DNS names."""
    ready: dict[tuple[str, str], list[IPv4Address]] = {}
    for ep in endpoints:
        meta = ep.get("metadata", {})
        ips = [IPv4Address(a["ip"]) for s in ep.get("subsets") or []
               for a in s.get("addresses") or [] if "." in a.get("ip", "")]
        ready[(meta.get("namespace", ""), meta.get("name", ""))] = ips
    names: dict[str, tuple[IPv4Address, ...]] = {}
    for svc in services:
        meta, spec = svc.get("metadata", {}), svc.get("spec", {})
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        ip = spec.get("clusterIP") or ""
        addrs = (sorted(ready.get((ns, name), [])) if ip in ("", "None")
                 else [IPv4Address(ip)] if "." in ip else [])
        names[f"{name}.{ns}.svc.{domain}".lower()] = tuple(addrs)
    return Records(names)


def answer(query: bytes, recs: Records, domain: str = DOMAIN) -> bytes:
    """The reply to one DNS message."""
    req = DNSRecord.parse(query)
    reply = req.reply()
    name = str(req.q.qname).rstrip(".").lower()
    if name != domain and not name.endswith("." + domain):
        reply.header.rcode = RCODE.REFUSED
        reply.header.aa = 0
        return bytes(reply.pack())
    addrs = recs.names.get(name)
    if addrs is None:
        reply.header.rcode = RCODE.NXDOMAIN
    elif req.q.qtype in (QTYPE.A, QTYPE.ANY):
        for a in addrs:
            reply.add_answer(RR(req.q.qname, QTYPE.A, rdata=A(str(a)), ttl=TTL))
    return bytes(reply.pack())
