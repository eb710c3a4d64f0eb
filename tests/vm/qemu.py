"""QEMU VMs booting the built image under OVMF, reached over SSH.

Every VM is started by PID and killed by PID, also when a test fails. TCG is
used unless a short probe shows KVM really works on this host.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Secure Boot: the firmware build that enforces it (it needs SMM), its variables
# with the site's boot certificate enrolled as PK, KEK and db by virt-fw-vars.
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
CERT_OWNER = "6b75626d-6573-6800-0000-000000000001"  # the GUID the enrolled entries carry
MGMT_MAC = "52:54:00:6b:6d:01"  # the management NIC of a test VM, unless it is given one
BOOT_TIMEOUT = 900.0  # TCG boots in ~2 min alone; with two VMs on two shared cores, more


def poll(what: str, check: Callable[[], T | None], timeout: float, every: float = 2.0) -> T:
    """Call check until it returns something, or fail after timeout naming what we waited for."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def kvm_works(timeout: float = 20.0) -> bool:
    """KVM only where it really starts a guest: /dev/kvm can exist and hang."""
    flags = Path("/proc/cpuinfo").read_text()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or not (" vmx" in flags or " svm" in flags):
        return False
    try:
        r = subprocess.run(["qemu-system-x86_64", "-accel", "kvm", "-machine", "q35", "-S",
                            "-display", "none", "-nodefaults", "-monitor", "stdio"],
                           input=b"quit\n", capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Nic:
    """A mesh NIC: one end of a point-to-point cable, a UDP socket netdev sending
    to its peer's port (or a tap device on the host). Either VM can be off; the
    other keeps its NIC."""

    netdev: str  # QEMU's id for it, also what `set_link` names
    mac: str
    port: int  # this end's UDP port on 127.0.0.1
    peer_port: int
    plugged: bool = True  # link (carrier) up; a VM starting takes it as it is
    speed_mbps: int | None = None  # what the guest's NIC reports (link cost follows it)
    boot: bool = False  # the firmware boots from it (UEFI PXE/HTTP over IPv6)
    # A tap device of this name on the host instead of a UDP socket: the other end
    # of the cable is whatever the tap is given to (a lab node's namespace).
    tap: str = ""


class Qmp:
    """A minimal QMP client over the VM's unix socket: one command, one answer."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.buf = b""
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("QMP connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error'].get('desc')}")
            return reply.get("return")

    def close(self) -> None:
        self.sock.close()


class VM:
    """One QEMU guest booted from a private copy of a disk image."""

    def __init__(self, name: str, disk: Path | None, workdir: Path, pubkey: str, key: Path,
                 memory_mib: int = 1536, cpus: int = 1, accel: str = "tcg",
                 uuid: str | None = None,
                 mgmt_mac: str = MGMT_MAC, nics: tuple[Nic, ...] = (),
                 credentials: dict[str, str] | None = None,
                 secure_boot_cert: str | None = None) -> None:
        self.name = name
        # PEM: Secure Boot on, with this certificate the only one the firmware trusts.
        self.secure_boot_cert = secure_boot_cert
        self.uuid = uuid  # SMBIOS system UUID: the node's hardware identity
        self.mgmt_mac = mgmt_mac
        self.nics = nics
        self.credentials = credentials or {}
        self.qmp_path = workdir / f"{name}.qmp"
        self.started_at: float | None = None  # time.monotonic() at power-on
        self.disk = disk
        self.dir = workdir
        self.pubkey = pubkey
        self.key = key
        self.memory = memory_mib
        self.cpus = cpus
        self.accel = accel
        self.port = free_port()
        self.console = workdir / f"{name}.console.log"
        self.console_offset = 0  # where the console of the latest power-on begins
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssh_config = workdir / f"{name}.ssh_config"
        self.ssh_config.write_text(
            f"Host {name}\n  HostName 127.0.0.1\n  Port {self.port}\n  User root\n"
            f"  IdentityFile {key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n"
            # A TCG guest on a busy host can take long to answer; one shared
            # connection spares it a key exchange per command.
            "  ConnectTimeout 60\n  ServerAliveInterval 10\n  ServerAliveCountMax 6\n"
            f"  ControlMaster no\n  ControlPath {workdir}/{name}.ssh.sock\n")

    def _enrolled_vars(self, vars_fd: Path) -> None:
        """OVMF's variables with Secure Boot on and only the site's certificate in PK,
        KEK and db (what an operator enrols in a PC's firmware setup)."""
        assert self.secure_boot_cert is not None
        cert = self.dir / f"{self.name}.boot-cert.pem"
        cert.write_text(self.secure_boot_cert)
        tool = Path(sys.executable).parent / "virt-fw-vars"
        subprocess.run([str(tool), "--input", str(OVMF_VARS), "--output", str(vars_fd),
                        "--set-pk", CERT_OWNER, str(cert), "--add-kek", CERT_OWNER, str(cert),
                        "--add-db", CERT_OWNER, str(cert), "--secure-boot"],
                       check=True, capture_output=True, timeout=120)

    def _firmware(self) -> list[str]:
        """QEMU's machine and OVMF arguments: its code, and a private copy of its
        variables (with the certificate enrolled when Secure Boot is on)."""
        vars_fd = self.dir / f"{self.name}.OVMF_VARS.fd"
        fresh = not vars_fd.exists()  # powered on again: its NVRAM kept, as a PC's
        if not self.secure_boot_cert:
            if fresh:
                shutil.copyfile(OVMF_VARS, vars_fd)
            return ["-machine", "q35",
                    "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}"]
        if fresh:
            self._enrolled_vars(vars_fd)
        return ["-machine", "q35,smm=on",
                # Only SMM code may write the variable store.
                "-global", "driver=cfi.pflash01,property=secure,value=on",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE_SECBOOT}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}"]

    def start(self) -> None:
        cpu = "max" if self.accel == "tcg" else "host"
        # A diskless PC's NICs have only OVMF's own network stack, as a PC's firmware:
        # QEMU's iPXE ROM on any one of them drives them all (and Secure Boot refuses
        # it), and the netboot finds nothing.
        rom = ",romfile=" if self.disk is None else ""
        credentials = {
            "ssh.authorized_keys.root": self.pubkey,
            # The user-mode NIC is the test's way in, not a mesh link: the node is told so.
            "kubermesh.not_mesh": self.mgmt_mac,
            **self.credentials,
        }
        cmd = [
            "nice", "-n", "10", "qemu-system-x86_64", "-name", self.name,
            *self._firmware(), "-accel", self.accel, "-cpu", cpu,
            "-smp", str(self.cpus), "-m", str(self.memory), "-nodefaults", "-display", "none",
            # restrict=on: no packet leaves the guest (hostfwd still reaches its sshd).
            "-netdev", f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", f"virtio-net-pci,netdev=mgmt,mac={self.mgmt_mac}{rom}",
            "-device", "virtio-rng-pci",
            # Appended to: a guest powered on again keeps its earlier boots' lines.
            "-chardev", f"file,id=serial,path={self.console},append=on",
            "-serial", "chardev:serial",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if self.disk is not None:
            cmd += ["-drive", f"if=none,id=disk,format=raw,file={self.disk}",
                    "-device", "virtio-blk-pci,drive=disk,bootindex=1"]
        else:
            # Diskless: the firmware boots over the mesh NIC marked boot, IPv6 only, as
            # a PC set up for it would (docs/netboot.md).
            cmd += ["-fw_cfg", "name=opt/org.tianocore/IPv4Support,string=no"]
        if self.uuid:
            cmd += ["-uuid", self.uuid]
        for nic in self.nics:
            device = f"virtio-net-pci,netdev={nic.netdev},mac={nic.mac}{rom}"
            if nic.boot:  # first in the boot order
                device += ",bootindex=1"
            if nic.speed_mbps:
                device += f",speed={nic.speed_mbps},duplex=full"
            if nic.tap:
                netdev = f"tap,id={nic.netdev},ifname={nic.tap},script=no,downscript=no"
            else:
                netdev = (f"socket,id={nic.netdev},udp=127.0.0.1:{nic.peer_port},"
                          f"localaddr=127.0.0.1:{nic.port}")
            cmd += ["-netdev", netdev, "-device", device]
        for name, value in credentials.items():
            cmd += ["-smbios", f"type=11,value=io.systemd.credential:{name}={value}"]
        unplugged = [n.netdev for n in self.nics if not n.plugged]
        if unplugged:
            cmd.append("-S")  # held until those cables are out
        self.console_offset = self.console.stat().st_size if self.console.exists() else 0
        # A socket left by the previous power-on would pass the wait below.
        self.qmp_path.unlink(missing_ok=True)
        # Appended to, as the console is, across power-ons.
        with (self.dir / f"{self.name}.qemu.log").open("ab") as qemu_log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=qemu_log,
                                         start_new_session=True)
        if unplugged:
            poll(f"{self.name}'s QMP socket", self.qmp_path.exists, 30, every=0.1)
            for netdev in unplugged:
                self.set_link(netdev, False)
            self.qmp("cont")
        self.started_at = time.monotonic()

    def qmp(self, command: str, **arguments: Any) -> Any:
        q = Qmp(self.qmp_path)
        try:
            return q.execute(command, **arguments)
        finally:
            q.close()

    def set_link(self, netdev: str, up: bool) -> None:
        """Plug (up) or pull (down) the cable on one NIC: the guest sees its carrier."""
        self.qmp("set_link", name=netdev, up=up)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ssh(self, command: str, timeout: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ssh", "-F", str(self.ssh_config), self.name, command],
                           capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"{self.name}: `{command}` exited {r.returncode}: "
                                 f"{r.stdout}{r.stderr}")
        return r

    def copy_in(self, files: dict[str, Path], dest: str, timeout: float = 120.0) -> None:
        """Copy files and directories from the host into dest on the guest, each
        under its name in `files` (a tar stream over SSH; no __pycache__)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, src in files.items():
                tar.add(src, arcname=name,
                        filter=lambda t: None if "__pycache__" in t.name else t)
        r = subprocess.run(["ssh", "-F", str(self.ssh_config), self.name,
                            f"mkdir -p {dest} && tar -x -C {dest}"],
                           input=buf.getvalue(), capture_output=True, timeout=timeout,
                           check=False)
        if r.returncode != 0:
            raise AssertionError(f"{self.name}: copying {', '.join(files)} into {dest}: "
                                 f"{r.stderr.decode(errors='replace')}")

    def _ssh_ready(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"{self.name}: QEMU exited ({self.proc and self.proc.returncode})"
                               f"; console tail:\n{self.console_tail()}")
        try:
            if self.ssh("true", timeout=90, check=False).returncode != 0:
                return False
        except subprocess.TimeoutExpired:
            return False
        # The shared connection every later command uses (they connect directly
        # while it is missing, e.g. after a reboot). Its output goes nowhere, so
        # no pipe stays open behind it.
        sock = self.dir / f"{self.name}.ssh.sock"
        if sock.exists() and subprocess.run(
                ["ssh", "-F", str(self.ssh_config), "-O", "check", self.name],
                capture_output=True, timeout=30, check=False).returncode != 0:
            sock.unlink()  # left by a master whose guest rebooted
        if sock.exists():
            return True
        subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "ControlMaster=yes",
                        "-o", "ControlPersist=900", "-N", "-f", self.name],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=90, check=False)
        return True

    def wait_ssh(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait until root can log in; returns the seconds it took."""
        start = time.monotonic()
        try:
            poll(f"SSH on {self.name}", self._ssh_ready, timeout, every=3.0)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; QEMU's user network (hostfwd, DHCP):\n"
                               f"{self.usernet()}\nconsole tail:\n{self.console_tail()}"
                               ) from None
        return time.monotonic() - start

    def usernet(self) -> str:
        """QEMU's view of the management NIC: did the guest take a DHCP lease?"""
        try:
            return str(self.qmp("human-monitor-command", **{"command-line": "info usernet"}))
        except (OSError, RuntimeError) as e:  # QEMU gone, or QMP refused
            return f"(QMP: {e})"

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until systemd has finished starting up; returns its state."""
        self.wait_ssh(timeout)
        return self.ssh("systemctl is-system-running --wait", timeout=timeout,
                        check=False).stdout.strip()

    def boot_id(self) -> str:
        return self.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def console_text(self) -> str:
        """The serial console so far ("" before QEMU has opened it)."""
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_since_start(self) -> str:
        """The serial console since this VM was last powered on."""
        try:
            with self.console.open("rb") as f:
                f.seek(self.console_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        text = self.console_text()
        return "\n".join(text.splitlines()[-lines:]) if text else "(no console output)"

    def reboot(self, timeout: float = 600.0) -> None:
        """Reboot the guest the way its owner would (`systemctl reboot`: a clean
        shutdown), and power the same machine on again: same disk, NVRAM, UUID,
        NICs and cables.

        Not QEMU's warm reset: under TCG here (QEMU 7.2, OVMF 2022.11) the firmware
        hung after about every other guest reset, printing nothing, its CPU busy in
        DXE code, for as long as anyone waited (two CI runs lost b's reboot; one
        guest alone hung on its second reboot). A cold power-on never has. So the
        guest's reset request ends QEMU (QMP set-action reboot=shutdown), as if the
        PC's reset button were its power button."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        self.qmp("set-action", reboot="shutdown")
        # sshd may go down with the connection open.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ssh("systemctl reboot", check=False, timeout=60)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Powered off and on by hand, as a PC's owner would: the tests after this
            # one still get their guest.
            tail = self.console_tail()
            self.stop()
            self.start()
            raise AssertionError(f"{self.name} did not shut down within {timeout:.0f} s of "
                                 f"`systemctl reboot` (powered off and on instead); console "
                                 f"tail:\n{tail}"
                                 ) from None
        subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit", self.name],
                       capture_output=True, timeout=30, check=False)
        self.proc = None
        self.start()

    def stop(self) -> None:
        """Kill this VM's QEMU (its own process group, by PID) and reap it."""
        if self.proc is None:
            return
        # The shared SSH connection's master process is ours too.
        with contextlib.suppress(subprocess.TimeoutExpired):  # it ends with the guest anyway
            subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit", self.name],
                           capture_output=True, timeout=30, check=False)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
            except ProcessLookupError:
                pass
        self.proc = None
