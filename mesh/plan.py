"""The address plan: everything a node is, derived from its hardware identity.

Nothing here is assigned or stored: a rebooted or re-flashed node derives the
same values, and no coordinator is needed.

Layout of the site's ULA /48 (16-bit subnet id, then 64-bit interface id):
    <ula>:0000::/64   node loopbacks, interface id = 64 bits of the node hash
    <ula>:0001::/64   anycast service addresses (site file)
    <ula>:0002::/64   reserved for IPv4 pod blocks embedded in IPv6 prefixes
    <ula>:0003::/64   control-plane slot claims (mesh.controlplane)
    <ula>:8000::/49   provisioning: a /64 per (node, link) on which the node serves a
                      neighbour that is not a member yet (netboot); never routed
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network

LOOPBACK_SUBNET = 0x0000
ANYCAST_SUBNET = 0x0001
POD_BLOCK_SUBNET = 0x0002
CONTROL_PLANE_SUBNET = 0x0003
PROVISIONING_SUBNETS = 0x8000  # subnet ids 0x8000-0xffff

# DMI product UUIDs that firmware vendors ship unset or shared by every board.
BOGUS_UUIDS = frozenset({
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
})
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class HardwareIdentity:
    """What a node is: its DMI product UUID if real, else its lowest permanent MAC."""

    kind: str  # "dmi" or "mac"
    value: str

    @classmethod
    def choose(cls, product_uuid: str | None, permanent_macs: list[str]) -> HardwareIdentity:
        uuid = (product_uuid or "").strip().lower()
        if _UUID.match(uuid) and uuid not in BOGUS_UUIDS:
            return cls("dmi", uuid)
        macs = sorted(m.lower() for m in permanent_macs if _MAC.match(m.lower()))
        macs = [m for m in macs if m != "00:00:00:00:00:00"]
        if not macs:
            raise ValueError(
                "no hardware identity: no usable DMI product UUID and no permanent MAC"
            )
        return cls("mac", macs[0])

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> HardwareIdentity:
        """"dmi:<uuid>" or "mac:<mac>", as str() writes it; ValueError says what is wrong."""
        kind, _, value = text.strip().lower().partition(":")
        if kind == "dmi" and _UUID.match(value):
            return cls("dmi", value)
        if kind == "mac" and _MAC.match(value):
            return cls("mac", value)
        raise ValueError(f"{text!r} is not a hardware identity (dmi:<uuid> or mac:<mac>)")


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str  # 16 hex digits
    hostname: str
    loopback: IPv6Address
    router_id: IPv4Address


def node_hash(identity: HardwareIdentity) -> bytes:
    return hashlib.sha256(b"kubermesh-node\0" + str(identity).encode()).digest()


def subnet(ula: IPv6Network, subnet_id: int) -> IPv6Network:
    if ula.prefixlen != 48:
        raise ValueError(f"site prefix must be a /48, got {ula}")
    return IPv6Network((int(ula.network_address) | (subnet_id << 64), 64))


def anycast_subnet(ula: IPv6Network) -> IPv6Network:
    return subnet(ula, ANYCAST_SUBNET)


def loopback_subnet(ula: IPv6Network) -> IPv6Network:
    return subnet(ula, LOOPBACK_SUBNET)


def provisioning_range(ula: IPv6Network) -> IPv6Network:
    """Every provisioning /64 of the site: kept out of OSPFv3 (mesh/frr.py)."""
    return IPv6Network((int(subnet(ula, PROVISIONING_SUBNETS).network_address), 49))


def provisioning_prefix(ula: IPv6Network, node_id: str, link: str) -> IPv6Network:
    """The /64 a node serves a newcomer from on one of its links (RAs, DHCPv6).
    Only that link uses it and it is never announced, so two nodes that happen to
    draw the same one do not disturb each other."""
    h = hashlib.sha256(f"kubermesh-provisioning\0{node_id}\0{link}".encode()).digest()
    return subnet(ula, PROVISIONING_SUBNETS | int.from_bytes(h[:2], "big") & 0x7FFF)


def derive(identity: HardwareIdentity, ula: IPv6Network) -> NodeIdentity:
    """Node id, hostname, loopback /128 and OSPF router-id from hardware identity."""
    h = node_hash(identity)
    node_id = h[:8].hex()
    iid = int.from_bytes(h[:8], "big") or 1  # interface id 0 is the subnet-router anycast
    rid = int.from_bytes(h[8:12], "big")
    if rid in (0, 0xFFFFFFFF):  # not valid router-ids; move deterministically
        rid = int.from_bytes(h[12:16], "big") | 1
    return NodeIdentity(
        node_id=node_id,
        hostname=f"km-{node_id[:12]}",
        loopback=IPv6Address(int(loopback_subnet(ula).network_address) | iid),
        router_id=IPv4Address(rid),
    )


def hostname_of(loopback: IPv6Address) -> str:
    """A node's hostname from its loopback (both come from its node id)."""
    return f"km-{int(loopback) & ((1 << 64) - 1):016x}"[:15]


def is_loopback(ula: IPv6Network, addr: ipaddress.IPv6Address) -> bool:
    return addr in loopback_subnet(ula)
