"""Kubelet wiring: containerd's and the kubelet's configuration for this node.

    python -m firstboot.kubelet --site FILE --hostname NAME [--overlay-state FILE]

Renders, from the site and the node's pod block (held by the overlay agent):
    <run-dir>/containerd/config.toml       containerd's CRI, CNI from the overlay agent
    <run-dir>/kubelet/config.yaml          KubeletConfiguration
    <run-dir>/kubelet/bootstrap-kubeconfig the site's bootstrap token
    <run-dir>/kubelet/kubelet.env          KUBELET_ARGS: node IP, the files above
    <kubelet-dir>/kubeconfig               the client certificate the bootstrap yields
Both kubeconfigs name the apiserver by its anycast address; the node IP is the
node's IPv4 /32 (the first address of its pod block), which every node routes.
The unit running the kubelet (units/system/kubermesh-kubelet.service) is skipped
where the image has no kubelet binary.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from mesh import pods, render
from mesh.site import Site, SiteError, load_site

APISERVER_PORT = 6443
PAUSE_IMAGE = "registry.k8s.io/pause:3.9"

_env = render.environment("firstboot")


@dataclass(frozen=True)
class Paths:
    run_dir: Path = Path("/run/kubermesh")
    kubelet_dir: Path = Path("/var/lib/kubelet")
    ca_file: Path = Path("/etc/kubernetes/pki/ca.crt")
    cni_bin_dir: Path = Path("/usr/lib/cni")
    static_pod_path: Path = Path("/etc/kubernetes/manifests")
    containerd_socket: Path = Path("/run/containerd/containerd.sock")

    @property
    def cni_conf_dir(self) -> Path:
        """Where the overlay agent writes the node's CNI network (its --cni-dir)."""
        return self.run_dir / "cni" / "net.d"

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


def render_containerd(paths: Paths, pause_image: str = PAUSE_IMAGE) -> str:
    return _env.get_template("containerd-config.toml.j2").render(
        pause_image=pause_image, cni_bin_dir=str(paths.cni_bin_dir),
        cni_conf_dir=str(paths.cni_conf_dir))


def render_kubelet_config(site: Site, hostname: str, pod_block: IPv4Network,
                          paths: Paths) -> str:
    return _env.get_template("kubelet-config.yaml.j2").render(
        hostname=hostname, ca_file=str(paths.ca_file),
        runtime_endpoint=f"unix://{paths.containerd_socket}", cluster_domain="cluster.local",
        cluster_dns=cluster_dns(site), pod_block=pod_block,
        static_pod_path=str(paths.static_pod_path))


def render_kubeconfig(site: Site, hostname: str, paths: Paths, bootstrap: bool) -> str:
    return _env.get_template("kubeconfig.j2").render(
        hostname=hostname, cluster=site.name, server=apiserver_url(site),
        ca_file=str(paths.ca_file), client_cert=str(paths.client_cert),
        token=site.secrets.bootstrap_token if bootstrap else "")


def kubelet_args(node_ip: IPv4Address, hostname: str, paths: Paths) -> list[str]:
    k = paths.run_dir / "kubelet"
    return [f"--config={k / 'config.yaml'}", f"--kubeconfig={paths.kubeconfig}",
            f"--bootstrap-kubeconfig={k / 'bootstrap-kubeconfig'}",
            f"--node-ip={node_ip}", f"--hostname-override={hostname}"]


def render_env(node_ip: IPv4Address, hostname: str, paths: Paths) -> str:
    args = " ".join(shlex.quote(a) for a in kubelet_args(node_ip, hostname, paths))
    return ("# Kubermesh: the kubelet's command line (kubermesh-kubelet.service). "
            "Generated: do not edit.\n"
            f"KUBELET_ARGS={shlex.quote(args)}\n")


def render_all(site: Site, hostname: str, pod_block: IPv4Network,
               paths: Paths) -> dict[Path, tuple[str, int]]:
    """Every file: path -> (content, mode). The bootstrap token is for root only."""
    node_ip = pods.node_address(pod_block)
    k = paths.run_dir / "kubelet"
    return {
        paths.run_dir / "containerd" / "config.toml": (render_containerd(paths), 0o644),
        k / "config.yaml": (render_kubelet_config(site, hostname, pod_block, paths), 0o644),
        k / "bootstrap-kubeconfig": (render_kubeconfig(site, hostname, paths, True), 0o600),
        k / "kubelet.env": (render_env(node_ip, hostname, paths), 0o644),
        paths.kubeconfig: (render_kubeconfig(site, hostname, paths, False), 0o600),
    }


def write_all(files: dict[Path, tuple[str, int]]) -> None:
    for path, (text, mode) in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m firstboot.kubelet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", type=Path, default=Path("/etc/kubermesh/site.toml"))
    p.add_argument("--hostname", required=True)
    p.add_argument("--overlay-state", type=Path, default=Path("/var/lib/kubermesh/overlay.json"),
                   help="the overlay agent's record of this node's pod block")
    p.add_argument("--run-dir", type=Path, default=Paths.run_dir)
    p.add_argument("--kubelet-dir", type=Path, default=Paths.kubelet_dir)
    args = p.parse_args(argv)
    try:
        site = load_site(args.site)
        block = IPv4Network(json.loads(args.overlay_state.read_text())["block"])
    except SiteError as e:
        print(f"kubelet config: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as e:
        print(f"kubelet config: no pod block in {args.overlay_state} ({e}); "
              "is the overlay agent running?", file=sys.stderr)
        return 1
    paths = Paths(run_dir=args.run_dir, kubelet_dir=args.kubelet_dir)
    files = render_all(site, args.hostname, block, paths)
    write_all(files)
    print(f"kubelet config: {args.hostname}, node IP {pods.node_address(block)}, apiserver "
          f"{apiserver_url(site)}; wrote {', '.join(str(f) for f in files)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
