"""IPv4 pod blocks and their IPv6 announcements: pure functions, no side effects.

A node owns one block of the site's pod range (`pods.block_prefix`, /24 by
default). It announces the block into OSPFv3 as a /128 on `lo` inside the
site's pod-block subnet (`<ula>:0002::/64`, see mesh.plan) whose interface id
embeds both the block and its owner:

    <ula>:0002 : AAAA:AAAA : RRRR:RRRR /128
                 IPv4 block   owner's OSPF router-id
                 (network address)

Every node then learns, from its kernel's IPv6 routes alone, every block, who
owns it and the next hops towards it. Two owners of one block are visible as
two /128s, and the lower router-id keeps the block. ospf6d announces `lo`'s
addresses already (the interface is passive in area 0), so no FRR
configuration changes with the block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from mesh import plan
from mesh.site import PodSettings


@dataclass(frozen=True, order=True)
class BlockClaim:
    """One node's announcement: `owner` (router-id) says it owns `block`."""

    block: IPv4Network
    owner: IPv4Address


def pod_block_subnet(ula: IPv6Network) -> IPv6Network:
    return plan.subnet(ula, plan.POD_BLOCK_SUBNET)


def block_at(pods: PodSettings, index: int) -> IPv4Network:
    """The index-th block of the pod range (0-based)."""
    if not 0 <= index < pods.blocks:
        raise ValueError(f"block index {index} outside 0..{pods.blocks - 1}")
    size = 1 << (32 - pods.block_prefix)
    return IPv4Network((int(pods.range.network_address) + index * size, pods.block_prefix))


def block_index(pods: PodSettings, block: IPv4Network) -> int:
    if block.prefixlen != pods.block_prefix or not block.subnet_of(pods.range):
        raise ValueError(f"{block} is not a /{pods.block_prefix} block of {pods.range}")
    return (int(block.network_address) - int(pods.range.network_address)) >> (
        32 - pods.block_prefix)


def candidates(node_id: str, pods: PodSettings) -> Iterator[IPv4Network]:
    """Every block of the range once, in an order fixed by the node id.

    The order is a permutation (start + i * step mod n with an odd step over a
    power-of-two count), so a node that must move on eventually tries every
    block, and a rebooted node walks the same sequence again.
    """
    h = hashlib.sha256(b"kubermesh-pod-block\0" + node_id.encode()).digest()
    n = pods.blocks
    start = int.from_bytes(h[:8], "big") % n
    step = (int.from_bytes(h[8:16], "big") | 1) % n or 1
    for i in range(n):
        yield block_at(pods, (start + i * step) % n)


def claim_address(ula: IPv6Network, claim: BlockClaim) -> IPv6Address:
    """The /128 announcing `claim`: block network address and owner in the interface id."""
    base = int(pod_block_subnet(ula).network_address)
    iid = (int(claim.block.network_address) << 32) | int(claim.owner)
    return IPv6Address(base | iid)


def parse_claim(ula: IPv6Network, pods: PodSettings, addr: IPv6Address) -> BlockClaim | None:
    """The claim a /128 announces, or None if it is not a valid claim of this site."""
    if addr not in pod_block_subnet(ula):
        return None
    iid = int(addr) & ((1 << 64) - 1)
    owner = IPv4Address(iid & 0xFFFFFFFF)
    network = IPv4Address(iid >> 32)
    try:
        block = IPv4Network((network, pods.block_prefix))  # strict: must be aligned
    except ValueError:
        return None
    if not block.subnet_of(pods.range) or int(owner) in (0, 0xFFFFFFFF):
        return None
    return BlockClaim(block, owner)


def owners(claims: Iterable[BlockClaim]) -> dict[IPv4Network, IPv4Address]:
    """Who keeps each block: of several claimants, the lowest router-id."""
    result: dict[IPv4Network, IPv4Address] = {}
    for c in claims:
        if c.block not in result or c.owner < result[c.block]:
            result[c.block] = c.owner
    return result


def choose_block(node_id: str, router_id: IPv4Address, pods: PodSettings,
                 others: Iterable[BlockClaim], current: IPv4Network | None) -> IPv4Network:
    """The block this node should own, given every other node's claims.

    It keeps `current` (its block, also one remembered across a reboot) unless
    a lower router-id claims it too; otherwise it takes the first candidate no
    one else claims, so a newcomer never evicts a node that holds a block.
    """
    taken: dict[IPv4Network, IPv4Address] = owners(c for c in others if c.owner != router_id)
    if current is not None:
        rival = taken.get(current)
        if rival is None or rival > router_id:
            return current
    for block in candidates(node_id, pods):
        if block not in taken:
            return block
    raise ValueError(f"every one of the {pods.blocks} pod blocks of {pods.range} is taken")


def node_address(block: IPv4Network) -> IPv4Address:
    """The node's IPv4 /32 on `lo`: the block's first host address, also the
    pods' gateway on the CNI bridge."""
    return block.network_address + 1


def routes_by_block(claims: Mapping[IPv6Address, BlockClaim],
                    mine: IPv4Network | None) -> dict[IPv4Network, IPv6Address]:
    """For each block but this node's own, the claim /128 whose next hops it takes:
    that of the block's keeper (the lowest router-id claiming it)."""
    best: dict[IPv4Network, tuple[IPv4Address, IPv6Address]] = {}
    for addr, c in claims.items():
        if c.block == mine:
            continue
        if c.block not in best or c.owner < best[c.block][0]:
            best[c.block] = (c.owner, addr)
    return {block: addr for block, (_, addr) in best.items()}
