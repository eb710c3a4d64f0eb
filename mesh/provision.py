"""Serving neighbours that are not members yet: what a node offers on such a link.

On each mesh link without a Full OSPFv3 adjacency, the node serves UEFI HTTP
boot over IPv6 from a provisioning /64 of that link (mesh.plan): router
advertisements with the "managed" flag, stateful DHCPv6 (the firmware needs an
address), the boot-file URL, and HTTP. dnsmasq does RA and DHCPv6; this module
renders its configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from mesh import ifname, render

HTTP_PORT = 4780  # the provisioning HTTP server, on provisioning addresses only
BOOT_FILE = "kubermesh.efi"
LEASE_TIME = "10m"

_env = render.environment("mesh")


@dataclass(frozen=True)
class ServedLink:
    name: str
    prefix: IPv6Network  # mesh.plan.provisioning_prefix(…, link)

    @property
    def server(self) -> IPv6Address:
        """The node's own address on the link: ::1 of the prefix."""
        return self.prefix.network_address + 1

    @property
    def boot_url(self) -> str:
        return f"http://[{self.server}]:{HTTP_PORT}/{BOOT_FILE}"


def render_dnsmasq(links: Sequence[ServedLink], run_dir: Path) -> str:
    """dnsmasq's configuration for the links being served (RA + DHCPv6, no DNS).
    ValueError names a bad interface name."""
    names = ifname.checked([link.name for link in links], "served interface name")
    if len(set(names)) != len(links):
        raise ValueError("a link is served twice")
    return _env.get_template("dnsmasq.conf.j2").render(
        links=links, run_dir=run_dir, lease_time=LEASE_TIME)


def parse_leases(text: str) -> list[tuple[str, IPv6Address]]:
    """dnsmasq's lease file: (client DUID or MAC, address) of each DHCPv6 lease."""
    leases = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] != "duid":
            try:
                address = IPv6Address(fields[2])
            except ValueError:
                continue  # an IPv4 lease: dnsmasq hands none out here
            leases.append((fields[4], address))
    return leases
