"""The node's packet filter: an `nft -f` script rendered from its mesh links and
which of them hold a Full OSPFv3 adjacency.

OSPFv3 authentication keeps a device on a mesh port from injecting routes, not
packets: it can still route through the node by hand. So the node forwards only
what comes from a Full adjacency (a member holding the site's key) or its own
pods, only towards the mesh or its pods; the management NIC never forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh import cni, ifname, provision, render

TABLE = "kubermesh"
# What a node serves to members over mesh links: ssh, etcd (client, peer), the
# apiserver, the kubelet, join requests and approvals (kubermesh nodes).
MESH_TCP_PORTS = (22, 2379, 2380, 6443, 10250, provision.HTTP_PORT)
DHCPV6_SERVER_PORT = 547

_env = render.environment("mesh")


# Clouds' instance metadata service: the node sends nothing to it.
CLOUD_METADATA = "169.254.169.254"


@dataclass(frozen=True)
class FilterSpec:
    mesh_links: tuple[str, ...]  # every mesh NIC of the node
    full_links: tuple[str, ...]  # those whose neighbour is a Full OSPFv3 adjacency (subset)
    serving_links: tuple[str, ...] = ()  # those the node serves a newcomer on (netboot)
    pod_bridge: str = cni.BRIDGE
    mesh_tcp_ports: tuple[int, ...] = MESH_TCP_PORTS  # served to members over mesh links


def render_nftables(spec: FilterSpec) -> str:
    """A complete `nft -f` script that replaces table inet TABLE, and only it, in
    one transaction. ValueError names a bad interface name or port."""
    mesh_links = ifname.checked(spec.mesh_links, "mesh interface name")
    full_links = ifname.checked(spec.full_links, "Full-adjacency interface name")
    serving = ifname.checked(spec.serving_links, "served interface name")
    (bridge,) = ifname.checked((spec.pod_bridge,), "pod bridge name")
    if stray := sorted(set(full_links) - set(mesh_links)):
        raise ValueError(f"Full-adjacency links that are not mesh links: {', '.join(stray)}")
    if stray := sorted(set(serving) - set(mesh_links)):
        raise ValueError(f"served links that are not mesh links: {', '.join(stray)}")
    if bridge in mesh_links:
        raise ValueError(f"the pod bridge {bridge!r} cannot be a mesh link")
    for port in spec.mesh_tcp_ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"not a TCP port: {port!r}")
    return _env.get_template("nftables.conf.j2").render(
        table=TABLE, bridge=bridge, mesh_links=mesh_links, full_links=full_links,
        serving_links=serving, tcp_ports=sorted(set(spec.mesh_tcp_ports)),
        dhcpv6=DHCPV6_SERVER_PORT, provisioning_port=provision.HTTP_PORT,
        metadata=CLOUD_METADATA)
