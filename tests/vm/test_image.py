"""The built image, booted under OVMF in QEMU, checked over SSH with testinfra.

The checks run on mesh guest a (`main`); the reboot is the mesh tests' (b's).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.vm.conftest import ROOT, Guests, Image
from tests.vm.mesh import serve_on, served_whole
from tests.vm.qemu import VM, poll

pytestmark = pytest.mark.vm


def test_root_is_read_only_squashfs_on_dm_verity(main: VM, host: Any, image: Image) -> None:
    root = json.loads(main.ssh("findmnt --json --output SOURCE,FSTYPE,OPTIONS /").stdout)
    fs = root["filesystems"][0]
    assert fs["source"] == "/dev/mapper/root"
    assert fs["fstype"] == "squashfs"
    assert "ro" in fs["options"].split(",")
    dm = host.check_output("basename $(readlink -f /dev/mapper/root)")
    assert host.file(f"/sys/block/{dm}/dm/uuid").content_string.startswith("CRYPT-VERITY-")
    # Pinned by the root hash the build recorded, through the UKI's command line.
    assert f"roothash={image.manifest['root_hash']}" in host.file("/proc/cmdline").content_string
    write = host.run("touch /usr/kubermesh-write-test")
    assert write.rc != 0 and "Read-only file system" in write.stderr


def test_no_failed_units(main: VM) -> None:
    failed = main.ssh("systemctl --failed --plain --no-legend").stdout.strip()
    assert failed == "", f"failed units:\n{failed}\n" + main.ssh(
        "journalctl -b -p warning --no-pager | tail -40", check=False).stdout
    assert main.ssh("systemctl is-system-running").stdout.strip() == "running"
    print(main.ssh("systemd-analyze time", check=False).stdout)  # boot time, for the record


def test_kubermesh_units_installed_and_enabled(host: Any, image: Image) -> None:
    for unit in image.manifest["units"]:
        assert host.file(f"/usr/lib/systemd/system/{unit}").exists, unit
    # The runtime checks the site on every start (and refuses a bad one by name): no
    # second Python process at boot to check it again.
    assert not host.service("kubermesh-site-check").is_enabled
    assert host.service("kubermesh-ssh-host-keys").is_enabled
    assert host.file("/usr/lib/systemd/system-preset/80-kubermesh.preset").exists
    # One runtime for the whole node side: no per-agent units any more.
    agent = host.service("kubermesh-agent")
    assert agent.is_enabled and agent.is_running
    # The runtime starts the kubelet once the apiserver is reachable: not enabled.
    enabled = host.run("systemctl is-enabled kubermesh-kubelet").stdout.strip()
    assert enabled == "static", enabled
    units = host.check_output("systemctl list-unit-files --no-legend 'kubermesh-*'")
    assert "kubermesh-overlay" not in units and "kubermesh-anycast.service" not in units, units
    # Its packet filter is in place; `lab` (test tooling) is not in the image.
    assert "table inet kubermesh" in host.check_output("nft list tables")
    assert host.run("/usr/lib/kubermesh/bin/python3 -c 'import lab.netns'").rc != 0
    assert host.run("kubermesh site check /etc/kubermesh/site.toml").rc == 0


# Drivers a mesh PC needs, by kind (image/tree.PRUNED_MODULES keeps them), and
# ones it cannot use, which the image leaves out.
KEPT_MODULES = ("e1000e", "igb", "igc", "r8169", "r8152", "tg3", "ixgbe", "nvme", "ahci",
                "usb_storage", "uas", "xhci_pci", "usbhid", "hid_generic", "uhid",
                "br_netfilter", "vxlan", "nf_tables", "xfs", "nfs", "cifs", "drm", "mlx5_core",
                "stmmac", "megaraid_sas", "iscsi_tcp", "virtio_net")
PRUNED_MODULES = ("snd_hda_intel", "amdgpu", "i915", "nouveau", "iwlwifi", "cfg80211",
                  "bluetooth", "uvcvideo", "ib_core", "lpfc", "ocfs2", "kvm", "tipc", "qede",
                  "sfc", "hfsplus", "matroxfb_base", "scsi_debug")


def test_what_a_mesh_pc_uses_is_kept_and_the_rest_left_out(host: Any, image: Image) -> None:
    for m in KEPT_MODULES:
        r = host.run(f"modinfo -F filename {m}")
        assert r.rc == 0 and r.stdout.strip(), f"{m} is missing from the image: {r.stderr}"
    for m in PRUNED_MODULES:
        assert host.run(f"modinfo -F filename {m}").rc != 0, f"{m} is still in the image"
    # The module index matches what is there (depmod ran after pruning).
    assert host.run("modprobe --show-depends nvme").rc == 0
    assert image.manifest["sizes"]["pruned_from_tree"] > 100 << 20
    assert host.run("systemctl is-enabled systemd-hwdb-update.service").stdout.strip() == \
        "masked"
    # udev's database keeps what changes devices (a keyboard's keys), not the names.
    hwdb = host.file("/usr/lib/udev/hwdb.bin")
    assert hwdb.size < 1 << 20 and b"KEYBOARD_KEY_" in hwdb.content, hwdb.size
    hub = host.check_output("systemd-hwdb query 'usb:v1D6Bp0002'")  # a USB 2 root hub
    assert "ID_AUTOSUSPEND=1" in hub and "FROM_DATABASE" not in hub, hub
    # Debian's packaging scripts' Perl, CNI plugins nothing chains: not shipped.
    assert not host.exists("perl")
    assert not host.file("/usr/lib/cni/portmap").exists
    assert host.file("/usr/lib/cni/loopback").exists
    # The ESP holds the UKI and no more (FAT16, sized to it).
    esp = host.check_output("blkid -o export /dev/disk/by-partlabel/ESP")
    assert "SEC_TYPE=msdos" in esp or "VERSION=FAT16" in esp, esp
    # What Kubernetes expects of a node: bridged pod traffic through netfilter.
    assert host.file("/sys/module/br_netfilter").exists
    assert host.file("/sys/module/overlay").exists
    assert host.sysctl("net.bridge.bridge-nf-call-iptables") == 1


def test_kubernetes_from_the_build_is_on_the_node(host: Any, image: Image) -> None:
    """What the manifest says the build installed answers with that version; the
    shipped images are in containerd (imported at boot, no registry) and run; the
    kubelet waits for an apiserver (none in this mesh) instead of failing in a loop."""
    k8s = image.manifest["kubernetes"]
    if k8s["components"] == "none":
        pytest.skip(f"no Kubernetes in this image: {k8s['why_none']}")
    asks = {"kubectl": "version --client", "kubeadm": "version -o short"}
    for name, version in k8s["components"].items():
        out = host.check_output(f"{name} {asks.get(name, '--version')}")
        assert version in out, (name, out)
    # kubeadm marshals YAML: it crashed before the build swapped reflect2.
    assert "InitConfiguration" in host.check_output("kubeadm config print init-defaults")
    poll("the shipped images imported", lambda: host.service("kubermesh-images").is_running,
         120)
    listed = host.check_output("ctr --namespace k8s.io images ls --quiet")
    for name in k8s["images"].values():
        assert name in listed.split(), (name, listed)
    busybox = k8s["images"]["busybox.tar"]
    ran = host.run(f"ctr --namespace k8s.io run --rm {busybox} km-image-test "
                   "/bin/sh -c 'echo hello from busybox'")
    assert ran.rc == 0 and "hello from busybox" in ran.stdout, ran.stderr
    kubelet = host.service("kubermesh-kubelet")
    assert not kubelet.is_running
    st = json.loads(host.check_output("kubermesh status --json"))
    assert st["kubelet"] == "inactive", st["kubelet"]


def test_shipped_python_matches_the_lock(host: Any, image: Image) -> None:
    out = host.check_output("/usr/lib/kubermesh/bin/python3 -c "
                            "'import importlib.metadata as m, json; "
                            "print(json.dumps({d.metadata[\"Name\"]: d.version "
                            "for d in m.distributions()}))'")
    shipped = {k.lower(): v for k, v in json.loads(out).items()}
    expected = image.manifest["packages"]["python"]
    assert {k.lower(): v for k, v in expected.items()} == shipped
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            assert shipped[name.lower()] == version, name


def test_services_run(host: Any) -> None:
    for name in ("ssh", "systemd-resolved", "systemd-logind", "systemd-journald", "frr",
                 "containerd"):
        assert host.service(name).is_running, name


def test_bfd_runs_ahead_of_workloads(host: Any) -> None:
    """bfdd is real-time (SCHED_RR): busy pods cannot delay BFD's packets past its
    300 ms and drop a healthy node from the mesh. zebra and ospf6d are not: real
    time, they starved the node runtime of a 1-CPU guest (image/tree.BFDD_WRAP)."""
    def policy(daemon: str) -> int:
        pid = host.check_output("pidof -s %s", daemon)
        return int(host.check_output("python3 -c 'import os, sys; print(os.sched_getscheduler("
                                     "int(sys.argv[1])))' %s", pid))

    assert policy("bfdd") == os.SCHED_RR
    assert policy("zebra") == policy("ospf6d") == os.SCHED_OTHER
    # The runtime and FRR weigh five times another service's share when the CPU is
    # short; the kernel's cgroup says so, not only the unit file.
    for unit in ("kubermesh-agent", "frr"):
        cgroup = host.check_output("systemctl show -P ControlGroup %s.service", unit)
        assert host.file(f"/sys/fs/cgroup{cgroup}/cpu.weight").content_string.strip() == \
            "500", unit


def test_etc_and_var_work(host: Any) -> None:
    var = host.mount_point("/var")
    assert var.filesystem == "ext4"
    assert host.check_output("lsblk -no PARTLABEL %s", var.device) == "kubermesh-var"
    # /etc: writable over the image's (RAM overlay), machine-id kept on /var.
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert len(machine_id) == 32
    assert host.file("/var/lib/kubermesh/machine-id").content_string.strip() == machine_id
    assert host.run("echo ok > /etc/kubermesh-write-test && rm /etc/kubermesh-write-test").rc == 0
    # The hostname is the node runtime's, derived from the hardware identity.
    status = json.loads(host.file("/run/kubermesh/status.json").content_string)
    assert host.check_output("hostname") == status["hostname"]
    assert status["hostname"].startswith("km-")
    assert host.file("/tmp").is_directory and host.mount_point("/tmp").filesystem == "tmpfs"


def test_secrets_and_keys(host: Any) -> None:
    # The site came from the stick's own site partition into RAM, root only; the
    # root (served to neighbours) has only a link to it.
    link = host.file("/etc/kubermesh/site.toml")
    assert link.is_symlink and link.linked_to == "/run/kubermesh/site.toml"
    site = host.file("/run/kubermesh/site.toml")
    assert (site.user, site.group, site.mode) == ("root", "root", 0o600)
    assert "kubermesh-sysroot: the site is from /dev/" in host.check_output(
        "journalctl -b -o cat --no-pager | grep -m1 'the site is from' || true")
    # No host keys from the image: the node made its own on /var.
    assert host.run("ls /etc/ssh/ssh_host_*").rc != 0
    assert host.file("/var/lib/kubermesh/ssh/ssh_host_ed25519_key").mode == 0o600
    # root's only key is the one the test passed as an SMBIOS credential.
    keys = host.file("/root/.ssh/authorized_keys").content_string
    assert keys.count("ssh-") == 1 and "kubermesh-vm-test" in keys


def test_dm_verity_refuses_a_flipped_byte(guests: Guests) -> None:
    vm = guests.corrupted
    vm.wait_ssh()
    r = vm.ssh(f"cat {guests.corrupted_file} > /dev/null", check=False)
    assert r.returncode != 0, "a file with a flipped byte was read without error"
    assert "Input/output error" in r.stderr
    # dm-verity said so, not squashfs; and a second read fails the same way.
    kmsg = vm.ssh("dmesg", check=False).stdout
    assert "verity" in kmsg and "corrupted" in kmsg, kmsg[-2000:]
    assert vm.ssh(f"sha256sum {guests.corrupted_file}", check=False).returncode != 0
    # Everything else on the root still reads.
    assert vm.ssh("cat /usr/lib/os-release > /dev/null").returncode == 0


def test_secure_boot_refuses_the_tampered_image_a_node_serves(guests: Guests,
                                                              image: Image) -> None:
    """corrupted's root has a flipped byte, so the netboot image it assembles from its
    own partitions is not the one the site signed: a PC with Secure Boot on and the
    site's certificate enrolled downloads it whole and refuses to run it. (The
    diskless guests of tests/vm/test_netboot.py boot the genuine one that way.)"""
    server, pc = guests.corrupted, guests.refused
    try:
        server.wait_ssh()
        serve_on(guests.mesh, guests.corrupted_refused)
        pc.start()
        served_whole(server, image.manifest["sizes"]["netboot_uki"], 600)
        mac = guests.corrupted_refused.b_nic.mac.replace(":", "").upper()

        def verdict() -> str | None:
            return next((ln for ln in pc.console_text().splitlines()
                         if "failed to load" in ln and f"HTTPv6 (MAC:{mac})" in ln), None)

        line = poll("the firmware's verdict on the served image", verdict, 300, every=5)
        assert line.rstrip().endswith("Access Denied"), line
        console = pc.console_text()
        assert "EFI stub" not in console and "Linux version" not in console, console[-3000:]
    finally:
        pc.stop()
        server.stop()  # its CPU is better spent on the mesh tests
