"""The kubelet's wiring: containerd's and the kubelet's configuration for a node.

From the site and the node's pod block:
    <run-dir>/containerd/config.toml       containerd's CRI, CNI from the node runtime
    <run-dir>/kubelet/config.yaml          KubeletConfiguration
    <run-dir>/kubelet/bootstrap-kubeconfig the site's bootstrap token
    <run-dir>/kubelet/kubelet.env          KUBELET_ARGS: node IP, the files above
    <kubelet-dir>/kubeconfig               the client certificate the bootstrap yields
Both kubeconfigs name the apiserver by its anycast address; the node IP is the
node's IPv4 /32 (the first address of its pod block), which every node routes.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from mesh import pods, render
from mesh.site import Site

APISERVER_PORT = 6443
# Built from the Kubernetes tree's pause.c and shipped in the image (image/kubesource.py):
# no registry needed.
PAUSE_IMAGE = "kubermesh.local/pause:3.4"
# Until 1.27 the kubelet takes its runtime from flags (`--container-runtime=remote`,
# needed by 1.20-1.23, deprecated until 1.27, which rejects it); from 1.27 on, from
# containerRuntimeEndpoint in its configuration file (which 1.20 ignores).
RUNTIME_IN_CONFIG = (1, 27)
NEWEST = (1, 31)  # what a node assumes when it cannot ask its kubelet


def kubelet_version(text: str) -> tuple[int, int]:
    """(major, minor) from `kubelet --version` ("Kubernetes v1.20.2"); ValueError
    says what it got when that is not a version."""
    m = re.search(r"\bv?(\d+)\.(\d+)\.\d+", text)
    if m is None:
        raise ValueError(f"not a Kubernetes version: {text.strip()[:80]!r}")
    return int(m.group(1)), int(m.group(2))

_env = render.environment("mesh")


@dataclass(frozen=True)
class KubeletPaths:
    """Where the files go and what they name. The node's own places come from its
    file contract (firstboot/paths.py); the rest are Debian's packages' defaults."""

    run_dir: Path
    kubelet_dir: Path
    ca_file: Path
    cni_conf_dir: Path  # where the node's CNI network (mesh/cni.py) is
    cni_bin_dir: Path = Path("/usr/lib/cni")
    static_pod_path: Path = Path("/etc/kubernetes/manifests")
    containerd_socket: Path = Path("/run/containerd/containerd.sock")

    @property
    def kubeconfig(self) -> Path:
        return self.kubelet_dir / "kubeconfig"

    @property
    def client_cert(self) -> Path:
        return self.kubelet_dir / "pki" / "kubelet-client-current.pem"


def apiserver_url(site: Site) -> str:
    return f"https://[{site.anycast['apiserver']}]:{APISERVER_PORT}"


def cluster_dns(site: Site) -> IPv4Address:
    """The cluster DNS service address: the tenth of the service range, as kubeadm."""
    return site.services.range.network_address + 10


def render_containerd(paths: KubeletPaths, pause_image: str = PAUSE_IMAGE) -> str:
    return _env.get_template("containerd-config.toml.j2").render(
        pause_image=pause_image, cni_bin_dir=str(paths.cni_bin_dir),
        cni_conf_dir=str(paths.cni_conf_dir))


def render_kubelet_config(site: Site, hostname: str, pod_block: IPv4Network,
                          paths: KubeletPaths, version: tuple[int, int] = NEWEST) -> str:
    return _env.get_template("kubelet-config.yaml.j2").render(
        hostname=hostname, ca_file=str(paths.ca_file),
        runtime_endpoint=(f"unix://{paths.containerd_socket}"
                          if version >= RUNTIME_IN_CONFIG else ""),
        cluster_domain="cluster.local",
        cluster_dns=cluster_dns(site), pod_block=pod_block,
        static_pod_path=str(paths.static_pod_path),
        volume_plugin_dir=str(paths.kubelet_dir / "volumeplugins"))


def render_kubeconfig(site: Site, hostname: str, paths: KubeletPaths, bootstrap: bool) -> str:
    return _env.get_template("kubeconfig.j2").render(
        hostname=hostname, cluster=site.name, server=apiserver_url(site),
        ca_file=str(paths.ca_file), client_cert=str(paths.client_cert),
        token=site.secrets.bootstrap_token if bootstrap else "")


def kubelet_args(node_ip: IPv4Address, hostname: str, paths: KubeletPaths,
                 version: tuple[int, int] = NEWEST) -> list[str]:
    k = paths.run_dir / "kubelet"
    args = [f"--config={k / 'config.yaml'}", f"--kubeconfig={paths.kubeconfig}",
            f"--bootstrap-kubeconfig={k / 'bootstrap-kubeconfig'}",
            f"--node-ip={node_ip}", f"--hostname-override={hostname}"]
    if version < RUNTIME_IN_CONFIG:
        args += ["--container-runtime=remote",
                 f"--container-runtime-endpoint=unix://{paths.containerd_socket}"]
    return args


def kube_proxy_args(site: Site, node_ip: IPv4Address, hostname: str,
                    paths: KubeletPaths) -> list[str]:
    """kube-proxy (iptables mode) on every node, with the kubelet's own client
    certificate: nodes may read services and endpoints (system:node-proxier,
    mesh.admission). It leaves conntrack's table size alone (the kernel's, shared by
    every namespace of a lab)."""
    return [f"--kubeconfig={paths.kubeconfig}", f"--hostname-override={hostname}",
            f"--bind-address={node_ip}", f"--cluster-cidr={site.pods.range}",
            "--proxy-mode=iptables", "--conntrack-max-per-core=0",
            "--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256"]


def render_kube_proxy_env(site: Site, node_ip: IPv4Address, hostname: str,
                          paths: KubeletPaths) -> str:
    args = " ".join(shlex.quote(a) for a in kube_proxy_args(site, node_ip, hostname, paths))
    return ("# Kubermesh: kube-proxy's command line (kubermesh-kube-proxy.service). "
            f"Generated: do not edit.\nKUBE_PROXY_ARGS={shlex.quote(args)}\n")


def render_env(node_ip: IPv4Address, hostname: str, paths: KubeletPaths,
               version: tuple[int, int] = NEWEST) -> str:
    # Quoted twice: each argument for the unit's word splitting of ${KUBELET_ARGS},
    # the whole line for EnvironmentFile=.
    args = " ".join(shlex.quote(a) for a in kubelet_args(node_ip, hostname, paths, version))
    return _env.get_template("kubelet.env.j2").render(args=shlex.quote(args))


def render_all(site: Site, hostname: str, pod_block: IPv4Network, paths: KubeletPaths,
               version: tuple[int, int] = NEWEST) -> dict[Path, tuple[str, int]]:
    """Every file: path -> (content, mode), for the kubelet of that (major, minor)
    version. The bootstrap token is for root only."""
    node_ip = pods.node_address(pod_block)
    k = paths.run_dir / "kubelet"
    config = render_kubelet_config(site, hostname, pod_block, paths, version)
    return {
        paths.run_dir / "containerd" / "config.toml": (render_containerd(paths), 0o644),
        k / "config.yaml": (config, 0o644),
        k / "bootstrap-kubeconfig": (render_kubeconfig(site, hostname, paths, True), 0o600),
        k / "kubelet.env": (render_env(node_ip, hostname, paths, version), 0o644),
        k / "kube-proxy.env": (render_kube_proxy_env(site, node_ip, hostname, paths), 0o644),
        k / "kube-proxy.env": (render_kube_proxy_env(site, node_ip, hostname, paths), 0o644),
        paths.kubeconfig: (render_kubeconfig(site, hostname, paths, False), 0o600),
        # The site's cluster CA: the kubelet trusts the apiserver, and clients, by it.
        paths.ca_file: (site.control_plane.ca_certificate, 0o644),
    }
