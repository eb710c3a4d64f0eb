"""etcd on the control-plane slot holders (pure: names, URLs, configuration).

Every slot holder runs one etcd member: peers and clients on the node's
loopback (routed by the mesh to every node), named by the node's hostname. The
configuration is etcd's own environment variables (ETCD_*), which its systemd
unit reads from a file and the lab passes to the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path

CLIENT_PORT = 2379
PEER_PORT = 2380


def url(addr: IPv6Address, port: int) -> str:
    return f"http://[{addr}]:{port}"


@dataclass(frozen=True)
class Member:
    name: str  # the node's hostname
    loopback: IPv6Address

    @property
    def peer_url(self) -> str:
        return url(self.loopback, PEER_PORT)

    @property
    def client_url(self) -> str:
        return url(self.loopback, CLIENT_PORT)


def initial_cluster(members: Mapping[str, str]) -> str:
    """ETCD_INITIAL_CLUSTER from name -> peer URL."""
    return ",".join(f"{n}={u}" for n, u in sorted(members.items()))


def environment(me: Member, cluster: Mapping[str, str], state: str, data_dir: Path,
                token: str, heartbeat_ms: int = 500, election_ms: int = 5000
                ) -> dict[str, str]:
    """etcd's configuration for this member: `state` is "new" when the slot holders
    found the cluster together, "existing" when this member joins a running one;
    its heartbeat and election timeout are the site's (control_plane.etcd_*_ms)."""
    if state not in ("new", "existing"):
        raise ValueError(f"initial cluster state {state!r} is not new or existing")
    if me.name not in cluster:
        raise ValueError(f"{me.name} is not in the initial cluster {sorted(cluster)}")
    return {
        "ETCD_NAME": me.name,
        "ETCD_DATA_DIR": str(data_dir),
        "ETCD_LISTEN_PEER_URLS": me.peer_url,
        "ETCD_LISTEN_CLIENT_URLS": me.client_url,
        "ETCD_ADVERTISE_CLIENT_URLS": me.client_url,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": me.peer_url,
        "ETCD_INITIAL_CLUSTER": initial_cluster(cluster),
        "ETCD_INITIAL_CLUSTER_STATE": state,
        "ETCD_INITIAL_CLUSTER_TOKEN": token,
        # The site's default, a heartbeat every 500 ms and a leader lost after 5 s:
        # etcd's LAN default (100 ms) cost a slow PC (an emulated one, in the VM
        # tests) a sixth of its CPU when idle, enough to make its BFD sessions flap.
        # A dead leader stalls writes for about the election timeout; a dead
        # holder's slot waits for its grace (300 s by default) anyway.
        "ETCD_HEARTBEAT_INTERVAL": str(heartbeat_ms),
        "ETCD_ELECTION_TIMEOUT": str(election_ms),
    }


def cluster_token(site_name: str, ula: object) -> str:
    """One token per site: members of another site's cluster are refused."""
    return f"kubermesh-{site_name}-{ula}"
