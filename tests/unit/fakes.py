"""Stand-ins shared by the node runtime's unit tests: a site, a node's
configuration under a temporary directory, a fake sysfs and a kernel that
answers like pyroute2's IPRoute (routes and lo's addresses as netlink messages)."""

from __future__ import annotations

import socket
import tomllib
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from typing import Any

from firstboot.node import Links, NodeConfig
from firstboot.ospf import Ospf
from firstboot.paths import NodePaths
from firstboot.vty import Vty
from mesh import pods
from mesh.plan import HardwareIdentity, NodeIdentity, loopback_subnet
from mesh.pods import BlockClaim
from mesh.site import Site, new_site_toml, parse_site

ME = IPv4Address("10.0.0.5")  # the router-id of the node under test
HW = HardwareIdentity("mac", "52:54:00:00:00:01")
RTN_UNICAST = 1
RTPROT_KERNEL = 2
RTPROT_OSPF = 188


def new_site(name: str = "s") -> Site:
    return parse_site(tomllib.loads(new_site_toml(name)))


def node_config(tmp_path: Path, site: Site | None = None, router_id: IPv4Address = ME,
                **kw: Any) -> NodeConfig:
    """A lab-style node: everything it writes under tmp_path/state; `kw` are
    NodeConfig fields (`paths=` replaces NodePaths fields)."""
    site = site or new_site()
    loopback = IPv6Address(int(loopback_subnet(site.mesh.ula).network_address) | 0x1234)
    node = NodeIdentity("00112233aabbccdd", "km-00112233aabb", loopback, router_id)
    paths = NodePaths.under(tmp_path / "state", tmp_path / "frr", tmp_path / "site.toml")
    paths = replace(paths, sysfs=tmp_path / "sys", **kw.pop("paths", {}))
    return NodeConfig(site, HW, node, paths, **kw)


def fake_nic(sysfs: Path, name: str, mac: str, physical: bool = True, perm: bool = True,
             carrier: bool = True, speed: int | None = None) -> None:
    d = sysfs / "class" / "net" / name
    if not d.exists():
        d.mkdir(parents=True)
        (d / "ifindex").write_text(f"{len(list(d.parent.iterdir())) + 1}\n")
    (d / "address").write_text(mac + "\n")
    (d / "addr_assign_type").write_text("0\n" if perm else "3\n")
    (d / "carrier").write_text("1\n" if carrier else "0\n")
    if speed is not None:
        (d / "speed").write_text(f"{speed}\n")
    if physical:
        (d / "device").mkdir(exist_ok=True)


class Msg(dict[str, Any]):
    """A netlink message as pyroute2 hands it out: fields by key, attributes by get_attr."""

    def get_attr(self, name: str) -> Any:
        return dict(self.get("attrs", [])).get(name)


def route_msg(dst: str, hops: list[tuple[str, int]], event: str = "RTM_NEWROUTE",
              proto: int = RTPROT_OSPF, table: int = 254) -> Msg:
    """An IPv6 /128 route as the kernel reports it: one next hop inline, more as
    RTA_MULTIPATH."""
    attrs: list[tuple[str, Any]] = [("RTA_DST", dst), ("RTA_TABLE", table)]
    if len(hops) == 1:
        attrs += [("RTA_GATEWAY", hops[0][0]), ("RTA_OIF", hops[0][1])]
    else:
        attrs.append(("RTA_MULTIPATH", [Msg(oif=oif, attrs=[("RTA_GATEWAY", gw)])
                                        for gw, oif in hops]))
    return Msg(event=event, family=socket.AF_INET6, type=RTN_UNICAST, dst_len=128,
               proto=proto, table=table, attrs=attrs)


def link_msg(event: str = "RTM_NEWLINK") -> Msg:
    return Msg(event=event, family=socket.AF_UNSPEC, attrs=[("IFLA_IFNAME", "enp1s0")])


class Kernel:
    """Just enough of pyroute2's IPRoute for the controllers: IPv6 routes (read),
    IPv4 routes (written), lo's addresses. Routes in `fail_next` fail once."""

    LO = 1

    def __init__(self) -> None:
        self.v6: dict[str, Msg] = {}
        self.v4: dict[str, Msg] = {}
        self.device_routes: dict[str, tuple[int, int]] = {}  # dst -> (oif, proto)
        self.addrs: set[tuple[str, int]] = set()
        self.fail_next: set[str] = set()
        self.reads: list[int] = []  # the family of each get_routes call

    # --- the test's side

    def add_route(self, dst: str | IPv6Address, hops: list[tuple[str, int]]) -> Msg:
        """A /128 route appears (ospf6d installed it); returns its RTM_NEWROUTE."""
        m = route_msg(str(dst), hops)
        self.v6[str(dst)] = m
        return m

    def del_route(self, dst: str | IPv6Address) -> Msg:
        """A route goes; returns its RTM_DELROUTE."""
        return Msg(self.v6.pop(str(dst)), event="RTM_DELROUTE")

    def claim(self, site: Site, claim: BlockClaim, hops: list[tuple[str, int]]) -> Msg:
        return self.add_route(pods.claim_address(site.mesh.ula, claim), hops)

    def via(self, block: IPv4Network | str) -> list[tuple[str, int]]:
        """The next hops of the IPv4 route to `block`."""
        r = self.v4[str(block)]
        return sorted((h.get_attr("RTA_VIA")["addr"], h["oif"])
                      for h in r.get_attr("RTA_MULTIPATH"))

    # --- pyroute2's side

    def get_routes(self, family: int, table: int = 254, proto: int | None = None) -> list[Msg]:
        self.reads.append(family)
        if family == socket.AF_INET6:
            return list(self.v6.values())
        return [r for r in self.v4.values() if proto is None or r["proto"] == proto]

    def route(self, verb: str, dst: str, **kw: Any) -> None:
        if dst in self.fail_next:
            self.fail_next.discard(dst)
            raise OSError(22, "Invalid argument")
        if verb == "del":
            del self.v4[dst]
            return
        assert verb == "replace", verb
        if "multipath" not in kw:  # a route out of one device (the service range on lo)
            self.device_routes[dst] = (kw["oif"], kw["proto"])
            return
        net = IPv4Network(dst)
        self.v4[dst] = Msg(family=socket.AF_INET, type=RTN_UNICAST, dst_len=net.prefixlen,
                           proto=kw["proto"], priority=kw["priority"], attrs=[
                               ("RTA_DST", str(net.network_address)),
                               ("RTA_MULTIPATH", [Msg(oif=h["oif"], attrs=[("RTA_VIA", h["via"])])
                                                  for h in kw["multipath"]])])

    def link_lookup(self, ifname: str) -> list[int]:
        assert ifname == "lo"
        return [self.LO]

    def get_addr(self, index: int, family: int | None = None) -> list[Msg]:
        assert index == self.LO
        out = []
        for a, p in sorted(self.addrs):
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            if family is None or family == fam:
                out.append(Msg(family=fam, prefixlen=p, attrs=[("IFA_ADDRESS", a)]))
        return out

    def addr(self, verb: str, index: int, address: str, prefixlen: int) -> None:
        assert index == self.LO
        if verb == "add":
            if (address, prefixlen) in self.addrs:
                raise OSError(17, "File exists")
            self.addrs.add((address, prefixlen))
        else:
            self.addrs.remove((address, prefixlen))


def idle_ospf(cfg: NodeConfig, tmp_path: Path) -> Ospf:
    """An Ospf controller whose `view` the test sets (no ospf6d behind it)."""
    return Ospf(cfg, Vty(tmp_path / "no-frr"), Links(cfg))
