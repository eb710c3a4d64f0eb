"""Several VMs of the built image, cabled point to point by QEMU UDP socket netdevs
(or, by a tap device, to a node of the network-namespace lab: `Mesh.tap`).

A topology is data: `Mesh.vm()` declares a machine (its SMBIOS UUID is its
hardware identity; give two the same to make twins), `Mesh.cable()` lays a
cable between two of them, plugged or not. A VM's NICs are fixed when it
powers on, so every cable it will ever have is laid before `start()`. Cables
are then plugged and pulled on running VMs (`plug`, `pull`), which the guests
see as carrier changes, as on a real NIC.

Used by the VM tests and the VM benchmarks; every QEMU it starts is stopped by
`close()`, by PID, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.vm.qemu import VM, Nic, free_port, kvm_works, poll

KEPT_LOGS = Path("/var/tmp/kubermesh-vm-logs")  # a failed test's consoles
DISK_SIZE = 4 << 30  # the stick the image is written to: room for /var
MEMORY_MIB = 1024


@dataclass
class Cable:
    a: VM
    b: VM
    a_nic: Nic
    b_nic: Nic


@dataclass
class Mesh:
    raw: Path  # the built disk image; each VM boots a private copy
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kubermesh-vm-",
                                                                     dir="/var/tmp")))
    accel: str = ""
    vms: dict[str, VM] = field(default_factory=dict)
    cables: list[Cable] = field(default_factory=list)
    _macs: int = 0

    def __post_init__(self) -> None:
        self.key = self.work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        "kubermesh-vm-test", "-f", str(self.key)], check=True)
        self.pubkey = self.key.with_suffix(".pub").read_text().strip()
        self.accel = self.accel or ("kvm" if kvm_works() else "tcg")

    def _mac(self) -> str:
        self._macs += 1
        return f"52:54:00:6b:{self._macs >> 8:02x}:{self._macs & 0xFF:02x}"

    def vm(self, name: str, twin_of: str | None = None, memory_mib: int = MEMORY_MIB,
           cpus: int = 1, disk: Path | None = None, diskless: bool = False,
           secure_boot_cert: str | None = None) -> VM:
        """Declare a VM; `twin_of` gives it another VM's hardware identity (UUID);
        `diskless` ones netboot from a neighbour (a cable with `boot=True`);
        `secure_boot_cert` (PEM) turns Secure Boot on, trusting only that certificate."""
        ident = self.vms[twin_of].uuid if twin_of else str(uuid.uuid4())
        if disk is None and not diskless:
            disk = self.disk_copy(name)
        vm = VM(name, disk, self.work, self.pubkey, self.key, memory_mib=memory_mib,
                cpus=cpus, accel=self.accel, uuid=ident, mgmt_mac=self._mac(),
                secure_boot_cert=secure_boot_cert)
        self.vms[name] = vm
        return vm

    def disk_copy(self, name: str) -> Path:
        dest = self.work / f"{name}.raw"
        subprocess.run(["cp", "--sparse=always", str(self.raw), str(dest)], check=True)
        os.truncate(dest, max(DISK_SIZE, dest.stat().st_size))
        return dest

    def cable(self, a: VM, b: VM, plugged: bool = True, a_mac: str | None = None,
              speed_mbps: int | None = None, b_boots: bool = False) -> Cable:
        """Lay a cable between a and b (neither started yet). `a_mac` sets a's NIC
        MAC, e.g. to a twin's, so that two machines match in every identity;
        `speed_mbps` is the speed both NICs report; `b_boots`: b's firmware
        netboots over it."""
        for v in (a, b):
            if v.proc is not None:
                raise RuntimeError(f"{v.name} is running: its NICs are fixed at power-on")
        pa, pb = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        n = len(self.cables)
        an = Nic(f"c{n}", a_mac or self._mac(), pa, pb, plugged, speed_mbps)
        bn = Nic(f"c{n}", self._mac(), pb, pa, plugged, speed_mbps, boot=b_boots)
        a.nics += (an,)
        b.nics += (bn,)
        c = Cable(a, b, an, bn)
        self.cables.append(c)
        return c

    def tap(self, vm: VM, speed_mbps: int | None = None) -> Nic:
        """Give vm (not started yet) a NIC whose host end is a tap device, named in
        the returned Nic: once vm runs, hand it to a lab node (`Lab.adopt`), and vm
        is cabled to that node of the network-namespace lab."""
        if vm.proc is not None:
            raise RuntimeError(f"{vm.name} is running: its NICs are fixed at power-on")
        n = len(self.cables) + sum(1 for v in self.vms.values() for x in v.nics if x.tap)
        nic = Nic(f"t{n}", self._mac(), 0, 0, speed_mbps=speed_mbps,
                  tap=f"kmt{os.getpid() % 100000}x{n}")
        vm.nics += (nic,)
        return nic

    def start(self, *vms: VM) -> None:
        for v in vms:
            v.start()

    def plug(self, c: Cable) -> None:
        self._set(c, True)

    def pull(self, c: Cable) -> None:
        self._set(c, False)

    def _set(self, c: Cable, up: bool) -> None:
        for v, nic in ((c.a, c.a_nic), (c.b, c.b_nic)):
            nic.plugged = up  # a VM started later takes the cable as it is now
            if v.alive():
                v.set_link(nic.netdev, up)

    def close(self, keep_logs: bool = False) -> Path | None:
        """Stop every VM and remove the work directory. `keep_logs` (a test failed):
        first ask every guest that still answers what it sees (DIAGNOSE, into
        NAME.diag.log), then copy the consoles and QEMU's logs under KEPT_LOGS;
        returns where."""
        try:
            if keep_logs:
                for v in self.vms.values():
                    if v.alive():
                        (self.work / f"{v.name}.diag.log").write_text(diagnose(v))
        finally:  # also when the diagnosis or one stop fails (Ctrl-C): no VM outlives this
            errors = []
            for v in self.vms.values():
                try:
                    v.stop()
                except BaseException as e:  # stop the others, then raise it
                    errors.append(e)
            if errors:
                raise errors[0]
        kept = None
        if keep_logs:
            kept = KEPT_LOGS / f"{self.work.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            kept.mkdir(parents=True, mode=0o700)
            for f in sorted(self.work.glob("*.log")):
                shutil.copyfile(f, kept / f.name)
        if os.environ.get("KUBERMESH_KEEP_VM_DIR"):
            print(f"VM files kept in {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        return kept


# What a failed test keeps from each guest that still answers over SSH: the node's
# own view, FRR's, the kernel's routes and the runtime's journal.
DIAGNOSE = ("kubermesh status; vtysh -c 'show ipv6 ospf6 neighbor' -c 'show bfd peers brief'; "
            "ip -6 route; ip -br addr; nft list ruleset | head -80; "
            "systemctl --failed --no-pager; "
            "journalctl -b --no-pager -o short-monotonic -u kubermesh-agent -u frr | tail -300")


def diagnose(vm: VM) -> str:
    try:
        r = vm.ssh(DIAGNOSE, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return "no answer over SSH within 60 s\n"
    return f"$ {DIAGNOSE}\n{r.stdout}{r.stderr}"


def nic_with_mac(vm: VM, mac: str) -> str:
    """The guest's name for its NIC with this MAC."""
    links = json.loads(vm.ssh("ip -j link show").stdout)
    return str(next(x["ifname"] for x in links if x.get("address") == mac))


def status(vm: VM) -> dict[str, Any]:
    """The node's own `kubermesh status --json`."""
    out = vm.ssh("kubermesh status --json", timeout=60).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def wait_status(vm: VM, what: str, check: Any, timeout: float = 600.0) -> dict[str, Any]:
    """Poll the node's status until check(status) holds; fail naming what and showing it."""
    last: dict[str, Any] = {}

    def ok() -> dict[str, Any] | None:
        nonlocal last
        try:
            r = vm.ssh("kubermesh status --json", timeout=60, check=False)
        except subprocess.TimeoutExpired:  # a busy TCG guest; ask again
            return None
        if r.returncode != 0:
            return None
        last = json.loads(r.stdout)
        return last if check(last) else None

    try:
        return poll(f"{vm.name}: {what}", ok, timeout, every=3.0)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last status:\n{json.dumps(last, indent=1)}") from None


def serve_on(mesh: Mesh, cable: Cable) -> tuple[str, dict[str, Any]]:
    """Plug cable: the node at its a end serves netboot on it at once (the neighbour
    is no member yet). Returns that link's name on the server and what it offers."""
    mesh.plug(cable)
    link = nic_with_mac(cable.a, cable.a_nic.mac)
    st = wait_status(cable.a, f"netboot served on {link}", lambda st: any(
        s["link"] == link for s in st["provision"].get("serving", ())), 120)
    return link, next(s for s in st["provision"]["serving"] if s["link"] == link)


def served_whole(server: VM, size: int, timeout: float) -> dict[str, Any]:
    """Wait until server has served the netboot image whole once; that record
    (its size checked: the image's netboot UKI's)."""
    st = wait_status(server, "the netboot image served whole", lambda st: any(
        x["path"] == "/kubermesh.efi" and x["done"] for x in st["provision"]["served"]),
        timeout)
    done: dict[str, Any] = next(x for x in st["provision"]["served"] if x["done"])
    assert done["bytes"] == size, done
    return done
