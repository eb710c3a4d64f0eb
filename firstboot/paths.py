"""Every file a node reads or writes: the on-node contract, in one place.

`NodePaths()` is the image's layout; `NodePaths.under(d)` puts a lab node's
writable state under its own directory (the lab runs many nodes on one host).
docs/node-files.md has the same list as a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYSTEM_CREDENTIALS = Path("/run/credentials/@system")


@dataclass(frozen=True)
class NodePaths:
    # Read
    site: Path = Path("/etc/kubermesh/site.toml")  # the site (root only: it holds secrets)
    sysfs: Path = Path("/sys")  # NICs, their carrier and speed; DMI identity
    credentials: tuple[Path, ...] = (SYSTEM_CREDENTIALS,)  # kubermesh.not_mesh, .anycast
    frr_run: Path = Path("/run/frr")  # ospf6d's and zebra's vty sockets, pid files
    kubelet_binary: Path = Path("/usr/bin/kubelet")
    etcd_binary: Path = Path("/usr/bin/etcd")  # Debian's etcd-server: a slot holder runs it
    kube_bin_dir: Path = Path("/usr/bin")  # kube-apiserver, -controller-manager, -scheduler
    networkd_state: Path = Path("/run/systemd/netif/links")  # which .network each link took
    udev: Path | None = Path("/run/udev")  # NICs udev has named (data/n<ifindex>); lab: None
    cmdline: Path = Path("/proc/cmdline")  # where the root and its verity hashes come from
    dev: Path = Path("/dev")  # the boot disk's partitions (netboot sources)
    # Written
    run_dir: Path = Path("/run/kubermesh")
    frr_conf_dir: Path = Path("/etc/frr")  # frr.conf (0640 frr: the OSPF key); /etc/frr
    networkd_dir: Path | None = Path("/run/systemd/network")  # not-mesh NICs' DHCP files
    state_dir: Path = Path("/var/lib/kubermesh")  # kept across reboots: the pod block
    cni_data_dir: Path = Path("/var/lib/cni/networks")  # host-local IPAM's records
    kubelet_dir: Path = Path("/var/lib/kubelet")
    ca_file: Path = Path("/etc/kubernetes/pki/ca.crt")

    @property
    def status(self) -> Path:
        """The node's one status (kubermesh status, kubermesh wait)."""
        return self.run_dir / "status.json"

    @property
    def frr_conf(self) -> Path:
        return self.frr_conf_dir / "frr.conf"

    @property
    def overlay_state(self) -> Path:
        """The pod block this node holds, remembered across restarts and reboots."""
        return self.state_dir / "overlay.json"

    @property
    def control_plane_state(self) -> Path:
        """The control-plane slot this node holds, remembered across restarts and reboots."""
        return self.state_dir / "control-plane.json"

    @property
    def etcd_data(self) -> Path:
        """A control-plane slot holder's etcd member (gone when it holds no slot)."""
        return self.state_dir / "etcd"

    @property
    def etcd_env(self) -> Path:
        """The etcd member's configuration, for kubermesh-etcd.service."""
        return self.run_dir / "etcd" / "etcd.env"

    @property
    def kube_pki(self) -> Path:
        """A slot holder's control-plane certificates and kubeconfigs (root only; gone
        when it holds no slot)."""
        return self.state_dir / "pki"

    def control_plane_env(self, component: str) -> Path:
        """A control-plane process's command line, for kubermesh-control-plane@.service."""
        return self.run_dir / "control-plane" / f"{component}.env"

    @property
    def netboot_recipe(self) -> Path:
        """A netbooted node's recipe of what it serves, from the neighbour that booted it."""
        return self.run_dir / "netboot.recipe"

    @property
    def cni_conf_dir(self) -> Path:
        """The node's CNI network (containerd's conf_dir)."""
        return self.run_dir / "cni" / "net.d"

    @classmethod
    def under(cls, d: Path, frr_run: Path, site: Path) -> NodePaths:
        """A lab node: everything it writes under `d`, no networkd, no hostname."""
        return cls(site=site, frr_run=frr_run, run_dir=d, frr_conf_dir=d / "etc",
                   networkd_dir=None, udev=None, state_dir=d, cni_data_dir=d / "cni-data",
                   kubelet_dir=d / "kubelet-state", credentials=(), ca_file=d / "ca.crt",
                   kubelet_binary=d / "no-kubelet", cmdline=d / "no-cmdline",
                   kube_bin_dir=d / "no-kubernetes")
