"""The Kubernetes control plane of a slot holder: kube-apiserver,
kube-controller-manager and kube-scheduler as plain processes (no images), their
command lines from the site and the node.

The flags are those `kubeadm init phase control-plane` writes for 1.20, with
the mesh's choices:
- the apiserver listens on every address (`--bind-address=::`), so the
  apiserver's anycast address reaches it once the node announces it;
- it advertises the node's overlay IPv4 address: the `kubernetes` service's
  ClusterIP is IPv4 (the site's service range), and the apiserver refuses an
  advertise address of the other family;
- it talks to its own node's etcd member only (as kubeadm's stacked etcd): they
  live and die together, and its command line does not change when other
  holders come and go (a restart of every apiserver when one holder dies would
  be an outage of its own);
- the controller-manager allocates no node CIDRs (the mesh gives each node its
  pod block) and signs kubelets' client certificates with the site's cluster CA;
- the controller-manager and the scheduler reach their own node's apiserver on
  its loopback (every holder's apiserver certificate names it).
Certificates and kubeconfigs come from mesh.pki (PKI_FILES names what is read).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from mesh.eviction import TOLERATION_SECONDS
from mesh.kubelet import APISERVER_PORT
from mesh.site import Site

APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
COMPONENTS = (APISERVER, CONTROLLER_MANAGER, SCHEDULER)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# What `kubeadm init` demands of a control-plane node in its preflight checks.
MIN_CPUS = 2
MIN_MEMORY_MIB = 1700


@dataclass(frozen=True)
class Component:
    """One control-plane process: its binary's name and its arguments."""

    name: str
    args: tuple[str, ...]


def too_small(cpus: int, memory_mib: int) -> str | None:
    """Why a node cannot run the control plane, or None if it can."""
    if cpus >= MIN_CPUS and memory_mib >= MIN_MEMORY_MIB:
        return None
    return (f"this node is too small for the Kubernetes control plane ({cpus} CPU, "
            f"{memory_mib} MiB; kubeadm asks {MIN_CPUS} CPUs and {MIN_MEMORY_MIB} MiB)")


def local_server(loopback: IPv6Address) -> str:
    """This node's own apiserver, as its controller-manager and scheduler reach it."""
    return f"https://[{loopback}]:{APISERVER_PORT}"


def readiness_url(loopback: IPv6Address) -> str:
    """What the anycast controller probes: /readyz answers without credentials."""
    return f"{local_server(loopback)}/readyz"


def components(site: Site, loopback: IPv6Address, node_ip: IPv4Address,
               etcd_server: str, pki: Path) -> tuple[Component, ...]:
    """The three processes of a slot holder, reading their files from `pki`."""
    def f(name: str) -> str:
        return str(pki / name)

    def kubeconfig(conf: str) -> tuple[str, ...]:
        return (f"--kubeconfig={f(conf)}", f"--authentication-kubeconfig={f(conf)}",
                f"--authorization-kubeconfig={f(conf)}")

    apiserver = (
        f"--advertise-address={node_ip}",
        "--bind-address=::",
        f"--secure-port={APISERVER_PORT}",
        "--insecure-port=0",
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--enable-bootstrap-token-auth=true",
        f"--client-ca-file={f('ca.crt')}",
        f"--tls-cert-file={f('apiserver.crt')}",
        f"--tls-private-key-file={f('apiserver.key')}",
        f"--kubelet-client-certificate={f('apiserver-kubelet-client.crt')}",
        f"--kubelet-client-key={f('apiserver-kubelet-client.key')}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--etcd-servers={etcd_server}",
        f"--service-cluster-ip-range={site.services.range}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={f('sa.pub')}",
        f"--service-account-signing-key-file={f('sa.key')}",
        # A node the mesh has lost is marked unreachable at once (mesh.eviction): its
        # pods tolerate that for seconds, not Kubernetes' default 300.
        f"--default-unreachable-toleration-seconds={TOLERATION_SECONDS}",
    )
    controller_manager = (
        *kubeconfig("controller-manager.conf"),
        "--bind-address=127.0.0.1",
        "--port=0",
        "--leader-elect=true",
        f"--cluster-name={site.name}",
        f"--client-ca-file={f('ca.crt')}",
        f"--root-ca-file={f('ca.crt')}",
        f"--cluster-signing-cert-file={f('ca.crt')}",
        f"--cluster-signing-key-file={f('ca.key')}",
        f"--service-account-private-key-file={f('sa.key')}",
        "--use-service-account-credentials=true",
        "--controllers=*,bootstrapsigner,tokencleaner",
        "--allocate-node-cidrs=false",
        f"--service-cluster-ip-range={site.services.range}",
    )
    scheduler = (
        *kubeconfig("scheduler.conf"),
        "--bind-address=127.0.0.1",
        "--port=0",
        "--leader-elect=true",
    )
    return (Component(APISERVER, apiserver), Component(CONTROLLER_MANAGER, controller_manager),
            Component(SCHEDULER, scheduler))


def check_args(c: Component) -> None:
    """Its arguments pass through `$ARGS` (kubermesh-control-plane@.service), which
    systemd splits on whitespace and expands: refuse what would not survive that."""
    for a in c.args:
        if any(ch.isspace() or ch in "\"'\\$%" for ch in a):
            raise ValueError(f"{c.name}: argument {a!r} would not survive systemd's $ARGS")
