"""The lab: a mesh of network namespaces cabled by veth pairs, each running real
FRR daemons and, by default, the node runtime (`kubermesh agent`), which finds
its cables and configures FRR, the overlay, anycast and the packet filter as on
a booted image. `agent=False` runs FRR alone with the configuration rendered by
`mesh.frr` (routing benchmarks).

Everything a lab makes is named after it and recorded before it is made, so
`Lab.down` removes it all, also after a crash of the lab itself:
    namespaces  km-<lab>-n<i>
    files       /run/kubermesh/lab/<lab>/  (state, site, per-node FRR dirs)
    processes   only those inside the lab's own namespaces
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from firstboot.files import write_atomic
from mesh import plan, topology
from mesh.frr import FRR_BIN, FRR_DAEMONS, FRR_RELOAD, WATCHFRR_OPTIONS, render_frr_conf
from mesh.kubecontrol import COMPONENTS as KUBE_CONTROL_PLANE
from mesh.plan import HardwareIdentity, NodeIdentity
from mesh.site import Site, load_site, new_site_toml
from mesh.topology import Topology

LAB_ROOT = Path("/run/kubermesh/lab")
# Where a failed lab's logs are kept (a lab's own directory goes with it).
KEPT_LOGS = Path("/var/tmp/kubermesh-lab-logs")
FRR_TMP = Path("/var/tmp/frr")  # FRR 8.4 puts each daemon's log buffer and crash log here
LAB_NAME = re.compile(r"^[a-z0-9]{1,8}$")
WORKERS = 8

Progress = Callable[[str], None]


class LabError(Exception):
    pass


def _quiet(_: str) -> None:
    pass


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class LabNode:
    index: int
    namespace: str
    node_id: str
    hostname: str
    loopback: str
    router_id: str
    links: dict[str, int]  # interface name -> peer node index
    hardware: str  # the made-up hardware identity, "mac:..."
    # Long-running programs started in the node besides FRR (agents); restarted by revive.
    agents: list[list[str]] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # agent name -> PID of its last start

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def identity(self) -> NodeIdentity:
        return NodeIdentity(self.node_id, self.hostname, IPv6Address(self.loopback),
                            IPv4Address(self.router_id))

    def link_to(self, peer: int) -> str:
        for ifname, p in self.links.items():
            if p == peer:
                return ifname
        raise LabError(f"{self.name} has no cable to n{peer}")


@dataclass
class LabState:
    name: str
    spec: str
    edges: list[tuple[int, int]]
    nodes: list[LabNode]
    dead: list[int] = field(default_factory=list)
    cut: list[tuple[int, int]] = field(default_factory=list)
    # True: each node's runtime (firstboot.agent) owns its frr.conf, as in the image.
    agent: bool = False
    # Anycast services: name -> the nodes that run one (e.g. etcd on n3, n7, n12).
    services: dict[str, list[int]] = field(default_factory=dict)
    # Where kube-apiserver & co. are: the slot holders run the control plane ("": none).
    kubernetes: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        d = json.loads(text)
        return cls(
            name=d["name"], spec=d["spec"],
            edges=[(a, b) for a, b in d["edges"]],
            nodes=[LabNode(**n) for n in d["nodes"]],
            dead=list(d["dead"]), cut=[(a, b) for a, b in d["cut"]], agent=d["agent"],
            services={k: list(v) for k, v in d.get("services", {}).items()},
            kubernetes=d.get("kubernetes", ""),
        )

    @property
    def topology(self) -> Topology:
        return Topology(self.spec, len(self.nodes), tuple(self.edges))

    def expected_routes(self, index: int) -> set[IPv6Address]:
        """Loopbacks node `index` must route to, given dead nodes and cut cables."""
        if index in self.dead:
            return set()
        reach = self.topology.without(self.dead, self.cut).distances(index)
        return {IPv6Address(self.nodes[i - 1].loopback) for i in reach if i != index}


@dataclass(frozen=True)
class Adjacency:
    neighbour: str  # lab node name, or the router-id when unknown
    interface: str
    state: str


@dataclass(frozen=True)
class NodeStatus:
    name: str
    node_id: str
    loopback: str
    router_id: str
    alive: bool
    adjacencies: tuple[Adjacency, ...]
    routes_to: int  # other nodes' loopbacks with a route
    expected: int  # how many it should route to, given dead nodes and cuts
    stage: str = ""  # the node runtime's stage ("" without one)
    pod_block: str = ""

    @property
    def full(self) -> int:
        return sum(1 for a in self.adjacencies if a.state == "Full")


SYSCTL = Path("/proc/sys")

# What a node's boot sets in its namespace.
BOOT_SYSCTLS = {
    "net.ipv6.conf.all.forwarding": 1,
    "net.ipv6.conf.default.forwarding": 1,
    "net.ipv4.ip_forward": 1,
    # Mesh links are link-local only: no SLAAC, no default route from RAs.
    "net.ipv6.conf.default.autoconf": 0,
    "net.ipv6.conf.default.accept_ra": 0,
}


def host_limits(nodes: int, cables: int) -> dict[str, int]:
    """What a lab of this size needs of the host, at least (sysctl -> value).

    The IPv6 and IPv4 neighbour tables are the host's, shared by every namespace:
    each cable end holds link-local neighbours (and OSPF's multicast peers), so
    the default of 1024 entries (gc_thresh3) overflows near 400 nodes and ospf6d's
    sends fail with EINVAL. Each node also runs a handful of daemons and an agent.
    """
    entries = max(1024, 8 * cables + 4 * nodes)
    need = {}
    for family in ("ipv6", "ipv4"):
        need[f"net.{family}.neigh.default.gc_thresh3"] = entries
        need[f"net.{family}.neigh.default.gc_thresh2"] = entries // 2
        need[f"net.{family}.neigh.default.gc_thresh1"] = entries // 8
    need["fs.inotify.max_user_instances"] = max(128, 8 * nodes)
    need["kernel.pid_max"] = max(32768, 64 * nodes)
    need["kernel.threads-max"] = max(32768, 64 * nodes)
    return need


# OSPFv3 and BFD timers a lab holds on this many nodes per host core (every node's
# daemons share the host's CPUs: at 200 nodes per core, 100 ms BFD packets and
# 1 s hellos from ~1600 sessions arrive late, sessions flap and never settle).
# Longer timers hold; the price is detection: a silent death is seen after
# bfd_interval_ms x bfd_multiplier. A real node is one PC and keeps the site's
# defaults (hello 1 s, dead 3 s, BFD 100 ms x 3).
# Beyond 110 nodes per core, SPF runs wait 200 ms and back off to 5 s: with every
# run at once, 400 ospf6d on 2 cores spent the cold start recomputing (every route
# everywhere after 162 s, against 35 s so).
LAB_TIMERS: tuple[tuple[float, dict[str, int]], ...] = (
    (60, {"hello_interval": 1, "dead_interval": 3, "bfd_interval_ms": 100,
          "bfd_multiplier": 3}),
    (110, {"hello_interval": 1, "dead_interval": 4, "bfd_interval_ms": 300,
           "bfd_multiplier": 3}),
    (float("inf"), {"hello_interval": 2, "dead_interval": 8, "bfd_interval_ms": 1000,
                    "bfd_multiplier": 3, "spf_delay_ms": 200, "spf_hold_ms": 1000,
                    "spf_max_hold_ms": 5000}),
)


# What one lab node costs in memory (MiB, proportional set size measured on a
# converged 45-node lab: zebra 7, ospf6d 3, bfdd 2, watchfrr 1; the node runtime 32).
FRR_MIB = 15
AGENT_MIB = 36


def memory_needed(nodes: int, agent: bool) -> int:
    """MiB a lab of this size needs (FRR_MIB, AGENT_MIB per node)."""
    return nodes * (FRR_MIB + (AGENT_MIB if agent else 0))


def check_memory(nodes: int, agent: bool, available_mib: int) -> None:
    """LabError naming what is needed and what is left, when it does not fit in 90 %
    of the host's available memory (every node's daemons stay resident)."""
    need = memory_needed(nodes, agent)
    if need <= 0.9 * available_mib:
        return
    hint = (f"; FRR alone (--frr-only) needs about {memory_needed(nodes, False)} MiB"
            if agent and memory_needed(nodes, False) <= 0.9 * available_mib else
            "; make the lab smaller")
    raise LabError(f"a lab of {nodes} nodes{' with the node runtime' if agent else ''} needs "
                   f"about {need} MiB of memory and this host has {available_mib} MiB "
                   f"available{hint}")


def available_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise LabError(f"no MemAvailable in {meminfo}")


# A node with the runtime counts as this many FRR-only nodes: its Python runtime,
# starting up beside its neighbours', loads the cores far more than FRR does, and
# BFD at 100 ms then flaps. (In CI, an ospf6d 8.4 crashed twice in such a flap on
# a 45-node lab: SIGSEGV in ospf6_neighbor_delete from a BFD-down inactivity timer.)
AGENT_WEIGHT = 3


def lab_timers(nodes: int, cores: int, agent: bool = False) -> dict[str, int]:
    """The timers a lab of `nodes` on `cores` host cores holds (LAB_TIMERS)."""
    per_core = nodes * (AGENT_WEIGHT if agent else 1) / max(cores, 1)
    return dict(next(t for limit, t in LAB_TIMERS if per_core <= limit))


def describe_timers(t: Mapping[str, int]) -> str:
    spf = ("" if t.get("spf_delay_ms", 0) == 0 else
           f", SPF after {t['spf_delay_ms']} ms, then every {t['spf_hold_ms']} ms to "
           f"{t['spf_max_hold_ms']} ms")
    return (f"hello {t['hello_interval']} s, dead {t['dead_interval']} s, BFD "
            f"{t['bfd_interval_ms']} ms x {t['bfd_multiplier']} (a silent death seen after "
            f"{t['bfd_interval_ms'] * t['bfd_multiplier'] / 1000:g} s){spf}")


def raise_host_limits(need: dict[str, int], progress: Callable[[str], None],
                      root: Path = SYSCTL) -> dict[str, tuple[int, int]]:
    """Raise (never lower) each limit below what is needed; say so. Returns what
    changed (key -> (was, now)); LabError naming the limit when it cannot."""
    changed = {}
    for key, want in need.items():
        path = root / key.replace(".", "/")
        try:
            have = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError) as e:
            raise LabError(f"cannot read {key} ({e}): the lab needs it at {want} or more") \
                from None
        if have >= want:
            continue
        try:
            path.write_text(f"{want}\n")
        except OSError as e:
            raise LabError(f"cannot raise {key} from {have} to {want} ({e.strerror}): a lab "
                           f"of this size needs it; raise it on the host (sysctl -w "
                           f"{key}={want}) or make the lab smaller") from None
        changed[key] = (have, want)
        progress(f"raised the host's {key} from {have} to {want} (a lab this size needs it)")
    return changed


def lab_identity(lab: str, index: int) -> HardwareIdentity:
    """A stable made-up permanent MAC per lab node (locally administered)."""
    h = hashlib.sha256(f"kubermesh-lab/{lab}/{index}".encode()).digest()
    return HardwareIdentity("mac", ":".join(f"{b:02x}" for b in (0x02, *h[:5])))


class Lab:
    def __init__(self, name: str = "lab", root: Path = LAB_ROOT) -> None:
        if not LAB_NAME.match(name):
            raise LabError(f"lab name {name!r}: use 1 to 8 lower-case letters and digits")
        self.name = name
        self.dir = root / name
        self.state_file = self.dir / "lab.json"
        self._state: LabState | None = None
        self._site: Site | None = None

    # --- state

    @property
    def prefix(self) -> str:
        return f"km-{self.name}-"

    def exists(self) -> bool:
        return self.state_file.exists() or bool(self._namespaces())

    @property
    def state(self) -> LabState:
        if self._state is None:
            if not self.state_file.exists():
                raise LabError(f"lab {self.name!r} is not up (no {self.state_file})")
            self._state = LabState.from_json(self.state_file.read_text())
        return self._state

    def _save(self) -> None:
        write_atomic(self.state_file, self.state.to_json(), 0o644)

    @property
    def site(self) -> Site:
        if self._site is None:
            self._site = load_site(self.dir / "site.toml")
        return self._site

    def node(self, ref: str | int) -> LabNode:
        """A node by index, `nI`, hostname or node id."""
        nodes = self.state.nodes
        for n in nodes:
            if str(ref) in (str(n.index), n.name, n.hostname, n.node_id, n.namespace):
                return n
        raise LabError(f"lab {self.name!r} has no node {ref!r} (n1..n{len(nodes)})")

    def node_dir(self, node: LabNode) -> Path:
        return self.dir / node.name

    # --- bringing it up

    def up(self, topo: Topology, site_file: Path | None = None,
           sites: dict[int, Site] | None = None, progress: Progress = _quiet,
           agent: bool = True, twins: dict[int, int] | None = None,
           services: dict[str, list[int]] | None = None,
           kubernetes: Path | None = None) -> None:
        """Create namespaces, cables and FRR for every node; on failure remove it
        all, keeping the logs (the error names where).

        `sites` overrides the site for some nodes (e.g. a wrong OSPF key).
        `agent`: FRR starts with no mesh configuration and every node runs the
        node runtime, which finds its cables and configures FRR, as in the image;
        False: FRR alone, configured by the lab.
        `twins` {i: j}: node i gets node j's hardware identity (a cloned PC).
        `services` {name: [i, …]}: a real anycast service on those nodes (etcd).
        `kubernetes`: a directory with kube-apiserver, kube-controller-manager and
        kube-scheduler: the control-plane slot holders run them (with the runtime).
        """
        if self.exists():
            raise LabError(f"lab {self.name!r} is already up: run `kubermesh lab down` first")
        check_memory(topo.nodes, agent, available_mib())
        for tool in [FRR_BIN / d for d in (*FRR_DAEMONS, "watchfrr")]:
            if not tool.exists():
                raise LabError(f"{tool} is missing: install FRR (apt-get install frr)")
        if agent and not FRR_RELOAD.exists():
            raise LabError(f"{FRR_RELOAD} is missing, and the node agent applies FRR "
                           "configuration with it: apt-get install frr-pythontools")
        # Traversable (frr must reach its node's directory), not listable.
        self.dir.mkdir(parents=True, mode=0o711)
        try:
            site_path = self.dir / "site.toml"
            cores = os.cpu_count() or 1
            chosen = lab_timers(topo.nodes, cores, agent)
            write_atomic(site_path, site_file.read_text() if site_file  # its secrets: 0600
                         else new_site_toml(f"lab-{self.name}", timers=chosen), 0o600)
            site = load_site(site_path)
            have = {k: getattr(site.mesh, k) for k in chosen}
            if site_file is None:
                progress(f"timers for {topo.nodes} nodes on {cores} cores: "
                         f"{describe_timers(have)} (--site FILE to choose others)")
            else:
                progress(f"timers from {site_file}: {describe_timers(have)}")
                if have["bfd_interval_ms"] < chosen["bfd_interval_ms"]:
                    progress(f"  these may not hold with {topo.nodes} nodes on {cores} cores "
                             f"(sessions flap when packets arrive late); the lab would "
                             f"choose {describe_timers(chosen)}")
            self._state = self._plan(topo, site, twins or {})
            self._state.agent = agent
            self._state.services = self._check_services(services or {}, site, agent)
            self._state.kubernetes = self._check_kubernetes(kubernetes, agent)
            self._save()  # recorded before anything is made, so down() finds it all
            progress(f"{topo.nodes} nodes, {len(topo.edges)} cables")
            raise_host_limits(host_limits(topo.nodes, len(topo.edges)), progress)
            self._create(site, sites or {}, progress)
        except BaseException as e:
            kept = self.down(keep_logs=True)
            if kept is not None and isinstance(e, (LabError, OSError,
                                                   subprocess.SubprocessError)):
                raise LabError(f"{e} (the lab's logs are kept in {kept})") from e
            raise

    def _check_services(self, services: dict[str, list[int]], site: Site,
                        agent: bool) -> dict[str, list[int]]:
        for name, members in services.items():
            if name != "etcd":
                raise LabError(f"service {name!r}: the lab runs etcd only")
            if name not in site.anycast:
                raise LabError(f"service {name!r}: the site has no anycast address for it")
            if not agent:
                raise LabError("anycast services need the node runtime (not --frr-only)")
            bad = [m for m in members if not 1 <= m <= len(self.state.nodes)]
            if bad or not members:
                raise LabError(f"service {name}: nodes {bad or members} are not in the lab "
                               f"(n1..n{len(self.state.nodes)})")
        return services

    def _check_kubernetes(self, kubernetes: Path | None, agent: bool) -> str:
        if kubernetes is None:
            return ""
        if not agent:
            raise LabError("the Kubernetes control plane needs the node runtime (not --frr-only)")
        missing = [c for c in KUBE_CONTROL_PLANE if not (kubernetes / c).is_file()]
        if missing:
            raise LabError(f"--kubernetes {kubernetes}: no {', '.join(missing)} there")
        if self.state.services.get("etcd"):
            raise LabError("the Kubernetes control plane runs on the slot holders' etcd: "
                           "not with --services etcd@…")
        return str(kubernetes.resolve())

    def _plan(self, topo: Topology, site: Site, twins: dict[int, int]) -> LabState:
        nodes = []
        for i in range(1, topo.nodes + 1):
            hw = lab_identity(self.name, twins.get(i, i))
            ident = plan.derive(hw, site.mesh.ula)
            links = {f"m{peer}": peer for peer in topo.neighbours(i)}
            nodes.append(LabNode(i, f"{self.prefix}n{i}", ident.node_id, ident.hostname,
                                 str(ident.loopback), str(ident.router_id), links, str(hw)))
        rids: dict[str, str] = {}
        for n in nodes:
            if n.router_id in rids and n.index not in twins:
                raise LabError(
                    f"router-id {n.router_id} of {n.name} collides with {rids[n.router_id]}"
                )
            rids[n.router_id] = n.name
        return LabState(self.name, topo.spec, list(topo.edges), nodes)

    def _create(self, site: Site, sites: dict[int, Site], progress: Progress) -> None:
        """Namespaces; then, with FRR alone, FRR on nodes with no cable and every
        cable at once: the daemons start on idle nodes, and the mesh forms once,
        with every node in it, instead of flooding a half-built mesh again with
        each node that starts (at 400 nodes that work starved the setup). With the
        node runtime, the cables first, as a PC boots with its cables in: each
        runtime then configures FRR once with every link (links appearing during
        its first reloads crashed an ospf6d 8.4 in a BFD flap)."""
        st = self.state
        run(["ip", "-batch", "-"], input="".join(f"netns add {n.namespace}\n"
                                                 for n in st.nodes))
        for n in st.nodes:
            self._node_dirs(n)
        progress("namespaces made")
        if st.agent:
            self._parallel(lambda n: self._sysctl(n, BOOT_SYSCTLS), st.nodes)  # veths inherit
            self._plug_all(progress)
        self._parallel(lambda n: self._start_frr(n, sites.get(n.index, site)), st.nodes)
        progress("FRR started on every node")
        if st.agent:
            for n in st.nodes:
                self.spawn(n.index, self.agent_argv(n), "agent")
            progress("node runtimes started")
        else:
            self._plug_all(progress)
        if st.services.get("etcd"):
            from lab.stack import start_etcd_cluster  # the stack above FRR

            start_etcd_cluster(self, st.services["etcd"])
            progress(f"etcd on {', '.join(f'n{m}' for m in st.services['etcd'])}")

    def _veth(self, a: int, b: int) -> str:
        """`ip -batch` line for the cable a-b: `m<b>` in a, `m<a>` in b."""
        na, nb = self.state.nodes[a - 1], self.state.nodes[b - 1]
        return (f"link add name m{b} netns {na.namespace} type veth "
                f"peer name m{a} netns {nb.namespace}\n")

    def agent_argv(self, n: LabNode) -> list[str]:
        """The node runtime as the image runs it, with the node's files under its
        directory, its made-up hardware identity, and veth cables as mesh links."""
        d = self.node_dir(n)
        argv = [sys.executable, "-m", "firstboot.agent", "--site", str(self.dir / "site.toml"),
                "--state-dir", str(d), "--frr-run-dir", str(d / "run"),
                "--identity", n.hardware, "--virtual-links", "--no-hostname",
                "--frr-log", f"file {d}/frr.log informational",
                "--light", "off"]  # lab nodes share the host's USB: none claims a light
        # The slot holders' etcd, as children, unless the lab runs its own etcd
        # (`services`): both would listen on the same loopback port.
        argv += ["--etcd", "off" if self.state.services.get("etcd") else "children"]
        if self.state.kubernetes:
            argv += ["--kube-bin-dir", self.state.kubernetes]
        for name, members in self.state.services.items():
            if n.index in members:
                argv += ["--anycast", f"{name}=http://[{n.loopback}]:2379/health"]
        return argv

    def status_file(self, ref: str | int) -> Path:
        """The node runtime's status (kubermesh status --file …)."""
        return self.node_dir(self.node(ref)) / "status.json"

    def _plug_all(self, progress: Progress) -> None:
        st = self.state
        run(["ip", "-batch", "-"], input="".join(self._veth(a, b) for a, b in st.edges))
        self._parallel(self._links_up, st.nodes)
        progress(f"{len(st.edges)} cables plugged")

    def _parallel(self, fn: Callable[[LabNode], object], nodes: Iterable[LabNode]) -> None:
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            for f in [pool.submit(fn, n) for n in nodes]:
                f.result()

    def _node_dirs(self, n: LabNode) -> None:
        d = self.node_dir(n)
        for sub in ("run", "etc", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for p in (d, d / "run", d / "etc", d / "tmp"):
            shutil.chown(p, "frr", "frr")
            p.chmod(0o750)  # frr.conf holds the OSPF key

    def _sysctl(self, n: LabNode, values: dict[str, int]) -> None:
        run(["ip", "netns", "exec", n.namespace, "sysctl", "-q", "-w",
             *[f"{k}={v}" for k, v in values.items()]])

    def _links_up(self, n: LabNode) -> None:
        lines = [f"link set dev {ifname} up\n" for ifname in n.links]
        if lines:
            run(["ip", "-n", n.namespace, "-batch", "-"], input="".join(lines))

    def _start_frr(self, n: LabNode, site: Site) -> None:
        """The node's boot: its forwarding and loopback as a PC's boot leaves them
        (see BOOT_SYSCTLS; lo holds only the node's loopback, no IPv4 route is
        left from an earlier life), then zebra, ospf6d and bfdd in the node's
        netns, in a private mount namespace where the node's own directories
        stand over /run/frr and /etc/frr (ospf6d keeps state at fixed paths
        there), and watchfrr, which starts again a daemon that crashes, as on a
        PC; then the rendered integrated config is applied the way FRR's init
        does, with vtysh -b. One `ip netns exec` for all of it."""
        d = self.node_dir(n)
        conf = d / "etc" / "frr.conf"
        if not self.state.agent:  # it holds the OSPF key: frr's only
            write_atomic(conf, render_frr_conf(site, n.identity, list(n.links),
                                               log=f"log file {d}/frr.log informational"),
                         0o640, owner="frr")
        elif not conf.exists():  # the runtime writes the real one
            write_atomic(conf, f"frr defaults traditional\nlog file {d}/frr.log informational\n",
                         0o640, owner="frr")
        write_atomic(d / "etc" / "vtysh.conf", "service integrated-vtysh-config\n", 0o640,
                     owner="frr")
        for pid in (d / "run").glob("*.pid"):
            pid.unlink()
        watchfrr = d / "watchfrr.sh"
        write_atomic(watchfrr, _watchfrr_script(d), 0o700)
        command = " ".join(f"-{c} '/bin/sh {watchfrr} {action} %s'"
                           for c, action in (("r", "restart"), ("s", "start"), ("k", "stop")))
        script = " && ".join([
            "sysctl -q -w " + " ".join(f"{k}={v}" for k, v in BOOT_SYSCTLS.items()),
            "ip link set dev lo up",
            "ip addr flush dev lo scope global",
            "ip route flush table main",
            f"ip addr add {n.loopback}/128 dev lo",
            f"mount --bind {d}/run /run/frr",
            f"mount --bind {d}/etc /etc/frr",
            # Each daemon's log buffer, and its crash log with a backtrace, go to
            # /var/tmp/frr/<daemon>.<pid>: the node's own, removed with the lab
            # and kept with its logs.
            f"mount --bind {d}/tmp {FRR_TMP}",
            *(f"{FRR_BIN}/{daemon} {_daemon_options(d, daemon)}" for daemon in FRR_DAEMONS),
            f"{FRR_BIN}/watchfrr -d --log file:{d}/watchfrr.log {' '.join(WATCHFRR_OPTIONS)} "
            f"{command} {' '.join(FRR_DAEMONS)}",
        ])
        Path("/run/frr").mkdir(exist_ok=True)
        FRR_TMP.mkdir(parents=True, exist_ok=True)
        run(["ip", "netns", "exec", n.namespace, "unshare", "--mount", "--propagation",
             "private", "sh", "-c", script])
        run(["vtysh", "-b", "--config_dir", str(d / "etc"), "--vty_socket", str(d / "run")])

    # --- failures

    def spawn(self, ref: str | int, argv: Sequence[str], name: str) -> int:
        """Start a long-running program (an agent) in the node's namespace; return its PID.

        Its output goes to <node dir>/<name>.log; kill and down end it with the
        node, and revive starts it again.
        """
        n = self.node(ref)
        if any(a[0] == name for a in n.agents):
            raise LabError(f"{n.name} already has an agent named {name!r}")
        n.agents.append([name, *argv])
        pid = self._spawn(n, list(argv), name)
        self._save()
        return pid

    def _spawn(self, n: LabNode, argv: list[str], name: str) -> int:
        with open(self.node_dir(n) / f"{name}.log", "ab") as log:
            # `ip netns exec` execs the program: the PID is the agent's own.
            proc = subprocess.Popen(["ip", "netns", "exec", n.namespace, *argv],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        n.pids[name] = proc.pid
        return proc.pid

    def stop_agent(self, ref: str | int, name: str, timeout: float = 10,
                   sig: signal.Signals = signal.SIGTERM) -> None:
        """End one agent of a node (`sig`, then SIGKILL after `timeout`), by the PID
        the lab started it with; the node and its other processes go on."""
        n = self.node(ref)
        pid = n.pids.get(name)
        if pid is None or pid not in self._pids(n.namespace):
            return
        for s, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
            _signal([pid], s)
            deadline = time.monotonic() + wait
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _alive(pid):
                return
        raise LabError(f"{name} (PID {pid}) in {n.name} did not end")

    def start_agent(self, ref: str | int, name: str) -> int:
        """Start again an agent spawned before (and stopped); return its new PID."""
        n = self.node(ref)
        for agent, *argv in n.agents:
            if agent == name:
                pid = self._spawn(n, argv, name)
                self._save()
                return pid
        raise LabError(f"{n.name} has no agent named {name!r}")

    def adopt(self, ref: str | int, ifname: str, name: str) -> None:
        """Move a host interface (a VM's tap) into the node's namespace as `name`,
        up: a cable from the lab to something outside it, which the node's runtime
        takes as a mesh link like its veths."""
        n = self.node(ref)
        run(["ip", "link", "set", ifname, "netns", n.namespace, "name", name])
        run(["ip", "-n", n.namespace, "link", "set", name, "up"])

    def kill(self, ref: str | int) -> LabNode:
        """A silent death: every process of the node (FRR, agents) SIGKILLed,
        forwarding off, cables left up."""
        return self.kill_many([ref])[0]

    def kill_many(self, refs: Iterable[str | int]) -> list[LabNode]:
        """Silent deaths at one moment: every process of every node is SIGKILLed
        before any node's forwarding goes off (a forklift, not a slow walk)."""
        nodes = [self.node(r) for r in refs]
        for _ in range(3):  # again, for a child forked while the first pass ran
            pids = [p for ps in _pids_in([n.namespace for n in nodes]).values() for p in ps]
            pids = [p for p in pids if _alive(p)]
            if not pids:
                break
            _signal(pids, signal.SIGKILL)
        off = {"net.ipv6.conf.all.forwarding": 0, "net.ipv4.ip_forward": 0}
        self._parallel(lambda n: self._sysctl(n, off), nodes)
        for n in nodes:
            if n.index not in self.state.dead:
                self.state.dead.append(n.index)
        self._save()
        return nodes

    def revive(self, ref: str | int) -> LabNode:
        """Bring a killed node back as from a reboot: lo holds only the node's
        loopback again (agents re-add what they announce), no IPv4 route is left,
        forwarding is on, FRR and the node's agents are started again."""
        n = self.node(ref)
        self._start_frr(n, self.site)
        for name, *argv in n.agents:
            self._spawn(n, argv, name)
        if n.index in self.state.dead:
            self.state.dead.remove(n.index)
        self._save()
        return n

    def cut(self, a: str | int, b: str | int) -> None:
        """Pull the cable a-b out: both NICs go away, as a USB NIC would."""
        na, nb = self.node(a), self.node(b)
        edge = (min(na.index, nb.index), max(na.index, nb.index))
        if edge not in self.state.edges or edge in self.state.cut:
            raise LabError(f"there is no cable between {na.name} and {nb.name}")
        run(["ip", "-n", na.namespace, "link", "del", "dev", na.link_to(nb.index)])
        self.state.cut.append(edge)
        self._save()

    def plug(self, a: str | int, b: str | int) -> None:
        """Plug a cable a-b in: back where one was cut, or a new one between running nodes."""
        na, nb = self.node(a), self.node(b)
        if na.index == nb.index:
            raise LabError("a cable needs two different nodes")
        edge = (min(na.index, nb.index), max(na.index, nb.index))
        if edge in self.state.edges and edge not in self.state.cut:
            raise LabError(f"{na.name} and {nb.name} are already cabled")
        run(["ip", "-batch", "-"], input=self._veth(na.index, nb.index))
        na.links[f"m{nb.index}"] = nb.index
        nb.links[f"m{na.index}"] = na.index
        for n in (na, nb):
            run(["ip", "-n", n.namespace, "link", "set", "dev", n.link_to(
                (nb if n is na else na).index), "up"])
        if edge in self.state.cut:
            self.state.cut.remove(edge)
        else:
            self.state.edges.append(edge)
        self._save()

    # --- looking at it

    def routes(self, ref: str | int) -> dict[IPv6Address, list[tuple[str, str]]]:
        """Kernel IPv6 routes to /128s in the site's loopback subnet: dst -> [(via, dev)]."""
        n = self.node(ref)
        out = run(["ip", "-n", n.namespace, "-6", "-j", "route", "show"]).stdout
        loops = plan.loopback_subnet(self.site.mesh.ula)
        routes: dict[IPv6Address, list[tuple[str, str]]] = {}
        for r in json.loads(out or "[]"):
            dst = r.get("dst", "")
            if "/" in dst or dst == "default":
                continue
            addr = IPv6Address(dst)
            if addr in loops and addr != IPv6Address(n.loopback):
                hops = r.get("nexthops") or [r]
                routes[addr] = [(h.get("gateway", ""), h.get("dev", "")) for h in hops]
        return routes

    def neighbours(self, ref: str | int) -> tuple[Adjacency, ...]:
        n = self.node(ref)
        if n.index in self.state.dead:
            return ()
        by_rid = {m.router_id: m.name for m in self.state.nodes}
        data = self.vtysh(n, "show ipv6 ospf6 neighbor json")
        return tuple(
            Adjacency(by_rid.get(x["neighborId"], x["neighborId"]), x.get("interfaceName", ""),
                      x.get("state", ""))
            for x in data.get("neighbors", [])
        )

    def vtysh(self, n: LabNode, command: str) -> dict[str, Any]:
        out = run(["vtysh", "--vty_socket", str(self.node_dir(n) / "run"), "-c", command]).stdout
        result: dict[str, Any] = json.loads(out or "{}")
        return result

    def status(self) -> list[NodeStatus]:
        def one(n: LabNode) -> NodeStatus:
            alive = n.index not in self.state.dead
            stage = block = ""
            if self.state.agent and alive:
                try:
                    st = json.loads(self.status_file(n.index).read_text())
                    stage, block = st["stage"], st["overlay"]["block"]
                except (OSError, ValueError, KeyError):
                    stage = "no status"
            return NodeStatus(stage=stage, pod_block=block,
                name=n.name, node_id=n.node_id, loopback=n.loopback, router_id=n.router_id,
                alive=alive,
                adjacencies=self.neighbours(n.index) if alive else (),
                routes_to=len(self.routes(n.index)) if alive else 0,
                expected=len(self.state.expected_routes(n.index)),
            )

        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(one, self.state.nodes))

    def differences(self, detail: bool = True) -> dict[str, str]:
        """What keeps each live node from being as the live topology says: a Full
        adjacency on every live cable and a route to exactly the loopbacks it can
        reach. Converged nodes are left out. Without detail, a node whose routes
        are wrong is not asked for its adjacencies as well: on a busy machine FRR's
        vty answers slowly, and polling hundreds of them slows the routing."""
        live = [n for n in self.state.nodes if n.index not in self.state.dead]
        topo = self.state.topology.without(self.state.dead, self.state.cut)
        name = {IPv6Address(n.loopback): n.name for n in self.state.nodes}

        def diff(n: LabNode) -> str:
            crashed = self.crashed(n)
            if crashed:
                return f"{', '.join(crashed)} not running (see {self.node_dir(n)}/*.log)"
            got, want = set(self.routes(n.index)), self.state.expected_routes(n.index)
            parts = [f"no route to {', '.join(sorted(name[a] for a in want - got))}"
                     if want - got else "",
                     f"stale route to {', '.join(sorted(name[a] for a in got - want))}"
                     if got - want else ""]
            if detail or got == want:
                full = {a.neighbour for a in self.neighbours(n.index) if a.state == "Full"}
                peers = {f"n{m}" for m in topo.neighbours(n.index)}
                parts.append(f"not Full with {', '.join(sorted(peers - full))}"
                             if peers - full else "")
            return "; ".join(p for p in parts if p)

        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            diffs = dict(zip([n.name for n in live], pool.map(diff, live), strict=True))
        return {k: v for k, v in diffs.items() if v}

    def converged(self) -> tuple[int, int]:
        """(converged live nodes, live nodes); see `differences`."""
        live = sum(1 for n in self.state.nodes if n.index not in self.state.dead)
        return live - len(self.differences(detail=False)), live

    def wait_converged(self, timeout: float, progress: Progress = _quiet) -> float:
        """Poll until every live node routes to exactly the loopbacks it should."""
        start = time.monotonic()
        last = (-1, -1)
        while True:
            done = self.converged()
            if done != last:
                progress(f"{done[0]}/{done[1]} nodes have every adjacency and route")
                last = done
            if done[0] == done[1]:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                sample = "; ".join(f"{k}: {v}" for k, v in list(self.differences().items())[:5])
                raise LabError(
                    f"not converged after {timeout:.0f} s: {done[0]}/{done[1]} nodes complete"
                    f" (e.g. {sample})"
                )
            time.sleep(0.2)

    def exec(self, ref: str | int, argv: Sequence[str], timeout: float = 60,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        n = self.node(ref)
        return run(["ip", "netns", "exec", n.namespace, *argv], timeout=timeout, check=check)

    def ping(self, src: str | int, dst: str | int, count: int = 3) -> bool:
        target = self.node(dst).loopback
        proc = self.exec(src, ["ping", "-6", "-n", "-q", "-c", str(count), "-i", "0.2",
                               "-W", "1", target], check=False)
        return proc.returncode == 0

    # --- tearing down

    def _namespaces(self) -> list[str]:
        out = run(["ip", "-j", "netns", "list"], check=False).stdout
        return [n["name"] for n in json.loads(out or "[]") if n["name"].startswith(self.prefix)]

    @staticmethod
    def _pids(namespace: str) -> list[int]:
        return _pids_in([namespace])[namespace]

    def crash_logs(self) -> list[Path]:
        """The crash logs FRR daemons of this lab wrote (each daemon that crashed,
        even one watchfrr started again)."""
        return sorted(self.dir.glob("*/tmp/*/crashlog"))

    def crashed(self, n: LabNode) -> list[str]:
        """FRR daemons of a live node that are no longer running (by their PID
        files and /proc: no pass over every process, which 400 nodes make slow)."""
        def running(daemon: str) -> bool:
            pid = self._daemon_pid(n, daemon)
            try:
                return (pid is not None and _alive(pid)  # a zombie's comm still names it
                        and Path(f"/proc/{pid}/comm").read_text().strip() == daemon)
            except OSError:
                return False
        return [d for d in FRR_DAEMONS if not running(d)]

    def _daemon_pid(self, n: LabNode, daemon: str) -> int | None:
        try:
            return int((self.node_dir(n) / "run" / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def down(self, keep_logs: bool | Path = False) -> Path | None:
        """Remove every namespace, process and file of this lab.

        Works from what exists, not only from the state file, so a lab whose
        `up` or whose state crashed half-way is still removed entirely.
        `keep_logs`: first copy the logs, statuses and FRR configurations (not
        the site file: it holds secrets) to that directory, or to one under
        KEPT_LOGS; returns where they are.
        """
        names = set(self._namespaces())
        self.removed = len(names)
        kept = None
        if keep_logs and self.dir.exists():
            kept = (keep_logs if isinstance(keep_logs, Path)
                    else KEPT_LOGS / f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            self._keep(kept)
        self._end_processes(sorted(names))
        # One `ip` for every namespace: at 400 nodes, one each took minutes.
        run(["ip", "-force", "-batch", "-"], check=False,
            input="".join(f"netns del {ns}\n" for ns in sorted(names)))
        shutil.rmtree(self.dir, ignore_errors=True)
        self._state = None
        self._site = None
        return kept

    removed = 0

    def _keep(self, dest: Path) -> None:
        for f in sorted(self.dir.rglob("*")):
            parts = f.relative_to(self.dir).parts  # FRR's crash logs: <node>/tmp/<daemon>.<pid>/
            if f.is_file() and (f.suffix in (".log", ".json", ".conflist") or f.name == "frr.conf"
                                or (parts[1:2] == ("tmp",) and not f.name.startswith("logbuf."))):
                target = dest / f.relative_to(self.dir)
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                shutil.copyfile(f, target)
                target.chmod(0o600)  # frr.conf holds the OSPF key

    @staticmethod
    def _end_processes(namespaces: list[str]) -> None:
        """SIGTERM, then SIGKILL, every process inside these namespaces (only this
        lab's own: it started them), found in one pass over /proc each round."""
        for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
            pids = [p for ps in _pids_in(namespaces).values() for p in ps]
            if not pids:
                return
            _signal(pids, sig)
            deadline = time.monotonic() + 2
            while pids and time.monotonic() < deadline:
                time.sleep(0.05)
                pids = [p for p in pids if _alive(p)]


def _daemon_options(d: Path, daemon: str) -> str:
    """How a lab node's FRR daemon is started: detached, as frr, its log in the
    node's directory; its configuration comes after, through vtysh -b."""
    return f"-d -u frr -g frr -f /dev/null --log file:{d}/{daemon}.log"


def _watchfrr_script(d: Path) -> str:
    """watchfrr's start, stop and restart of one daemon of the lab node whose
    directory is d, or of `all` of them (FRR 8.4's watchfrr restarts everything when
    zebra dies): what frrinit.sh does on a PC, where a daemon started again reads
    the integrated configuration through vtysh -b -d. It runs in the node's
    namespaces, where /run/frr and /etc/frr are the node's own, and ends a daemon
    only by the PID its pid file names, when that process is still the daemon and
    in this node's network namespace (400 nodes run 400 ospf6d)."""
    return f"""#!/bin/sh
action=$1
if [ "$2" = all ]; then daemons="{' '.join(FRR_DAEMONS)}"; else daemons=$2; fi
stop() {{
    pidfile={d}/run/$1.pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$1" ] &&
       [ "$(readlink /proc/$pid/ns/net)" = "$(readlink /proc/self/ns/net)" ]; then
        kill -9 "$pid"
        for _ in $(seq 50); do [ -e /proc/$pid ] || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}}
start() {{
    {FRR_BIN}/$1 {_daemon_options(d, "$1")} &&
    vtysh -b -d "$1" --config_dir {d}/etc --vty_socket {d}/run
}}
reversed=""
for daemon in $daemons; do reversed="$daemon $reversed"; done
case $action in
    start) for daemon in $daemons; do start $daemon || exit 1; done ;;
    stop) for daemon in $reversed; do stop $daemon; done ;;
    restart)
        for daemon in $reversed; do stop $daemon; done
        for daemon in $daemons; do start $daemon || exit 1; done ;;
    *) echo "usage: $0 start|stop|restart DAEMON|all" >&2; exit 2 ;;
esac
"""


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    with contextlib.suppress(OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone (ENOENT), or gone between open and read (ESRCH)
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pids_in(namespaces: Iterable[str]) -> dict[str, list[int]]:
    """The processes in each named network namespace, from one pass over /proc
    (what `ip netns pids` does, once for all of them)."""
    want: dict[tuple[int, int], str] = {}
    out: dict[str, list[int]] = {}
    for ns in namespaces:
        out[ns] = []
        with contextlib.suppress(OSError):
            st = os.stat(f"/run/netns/{ns}")
            want[(st.st_dev, st.st_ino)] = ns
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                st = os.stat(f"/proc/{entry.name}/ns/net")
            except OSError:
                continue  # gone, or a kernel thread
            if (owner := want.get((st.st_dev, st.st_ino))) is not None:
                out[owner].append(int(entry.name))
    return out


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def parse_topology(spec: str) -> Topology:
    try:
        return topology.parse(spec)
    except ValueError as e:
        raise LabError(str(e)) from None
