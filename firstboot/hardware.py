"""What the node is and which NICs it has, read from sysfs (the only side effect here)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mesh.plan import HardwareIdentity

# net_device addr_assign_type: 0 is NET_ADDR_PERM, the address burnt into the NIC.
NET_ADDR_PERM = "0"


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    physical: bool  # backed by a device (PCI, USB, virtio), not veth/bridge/tun
    permanent: bool


def nics(sysfs: Path = Path("/sys")) -> list[Nic]:
    found = []
    for d in sorted((sysfs / "class" / "net").iterdir()):
        if d.name == "lo":
            continue
        found.append(Nic(
            name=d.name,
            mac=_read(d / "address").lower(),
            physical=(d / "device").exists(),
            permanent=_read(d / "addr_assign_type") == NET_ADDR_PERM,
        ))
    return found


def identity(sysfs: Path = Path("/sys")) -> HardwareIdentity:
    """DMI product UUID where real, else the lowest permanent MAC of a physical NIC."""
    uuid = _read(sysfs / "class" / "dmi" / "id" / "product_uuid")
    macs = [n.mac for n in nics(sysfs) if n.physical and n.permanent]
    return HardwareIdentity.choose(uuid, macs)


def mesh_links(all_nics: Iterable[Nic], not_mesh: Iterable[str],
               physical_only: bool = True) -> list[str]:
    """Every physical NIC except those matching a not-mesh glob."""
    excluded = list(not_mesh)
    return sorted(
        n.name for n in all_nics
        if (n.physical or not physical_only)
        and not any(fnmatch.fnmatchcase(n.name, g) or fnmatchcase_mac(n.mac, g) for g in excluded)
    )


def udev_done(udev: Path | None, sysfs: Path, nic: str) -> bool:
    """Whether udev has finished with the NIC: its database entry data/n<ifindex> says
    a .link file was applied (ID_NET_LINK_FILE) and names the NIC as it is now
    (ID_NET_NAME). Until then the NIC may be renamed a moment later (eth1 becomes
    enp0s4). True where no udev runs (`udev` None, or no udevd control socket)."""
    if udev is None or not (udev / "control").exists():
        return True
    ifindex = _read(sysfs / "class" / "net" / nic / "ifindex")
    try:
        text = (udev / "data" / f"n{ifindex}").read_text() if ifindex else ""
    except OSError:
        return False
    props = dict(line[2:].split("=", 1) for line in text.splitlines()
                 if line.startswith("E:") and "=" in line)
    return "ID_NET_LINK_FILE" in props and props.get("ID_NET_NAME", nic) == nic


def fnmatchcase_mac(mac: str, pattern: str) -> bool:
    """A not-mesh entry may also name a NIC by MAC address (stable across renames)."""
    return ":" in pattern and fnmatch.fnmatchcase(mac, pattern.lower())


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def carrier(sysfs: Path, name: str) -> bool:
    return _read(sysfs / "class" / "net" / name / "carrier") == "1"


def speed(sysfs: Path, name: str) -> int | None:
    """The NIC's speed in Mb/s, None when it does not say (-1, no carrier, no file)."""
    try:
        mbps = int(_read(sysfs / "class" / "net" / name / "speed"))
    except ValueError:
        return None
    return mbps if mbps > 0 else None
