"""etcd on the control-plane slot holders: one member per slot, one cluster.

Holding a slot (firstboot.controlplane), a node runs an etcd member:
- with data of its own (a restart, a reboot within the grace): as it is;
- else, if some other holder's member answers: it joins the running cluster
  (etcd's own member API, v3 JSON gateway): the members of nodes that hold no
  slot any more (a dead holder's, replaced) are removed, this node is added,
  and it starts as "existing"; a member under this node's own address that has
  run is removed and added again when the cluster has lost its connection (this
  node lost its data), and never while it runs (a PC with this node's identity);
- else, once every slot is held: all holders found the cluster together, each
  with the same initial cluster (they see the same holders).
Holding no slot (never, or yielded), it runs no member and keeps no member data.

The member runs as `kubermesh-etcd.service` on a node (its configuration in
NodePaths.etcd_env) or as a child process in the lab (`--etcd children`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from ipaddress import IPv6Address
from typing import Any

from firstboot.controlplane import Slots
from firstboot.node import NodeConfig
from firstboot.ospf import Ospf
from firstboot.runtime import Controller
from firstboot.services import ChildRunner, Runner, UnitRunner
from mesh import etcd, plan
from mesh.etcd import Member

log = logging.getLogger("kubermesh.etcd")

UNIT = "kubermesh-etcd.service"
API_TIMEOUT = 2.0
# The holders found a new cluster only once they have been the same for this long:
# all of them must start with one initial cluster.
FOUND_AFTER = 5.0


def unit_runner(cfg: NodeConfig) -> UnitRunner:
    """kubermesh-etcd.service, configured by the environment file it reads."""
    return UnitRunner(UNIT, cfg.paths.etcd_env)


def child_runner(cfg: NodeConfig) -> ChildRunner:
    return ChildRunner(cfg.paths.etcd_binary, cfg.paths.state_dir / "etcd.log")


def _name_of(peer_url: str) -> str:
    """A member's name from its peer URL: the hostname its loopback gives."""
    host = peer_url.split("[", 1)[1].split("]", 1)[0]
    return plan.hostname_of(IPv6Address(host))


def _answers(client_url: str) -> bool:
    """Whether an etcd process answers at all (GET /version needs no quorum)."""
    try:
        with urllib.request.urlopen(f"{client_url}/version", timeout=API_TIMEOUT) as r:
            return bool(r.status == 200)
    except (OSError, ValueError):
        return False


def peer_active(client_url: str, member_id: str) -> bool:
    """Whether the member at client_url has a live connection to member `member_id`
    (decimal, as the JSON gateway gives it), from etcd's own metrics: a member whose
    process is gone loses it within seconds (etcd's stream reader times out)."""
    with urllib.request.urlopen(f"{client_url}/metrics", timeout=API_TIMEOUT) as r:
        text = r.read().decode()
    remote = f'Remote="{int(member_id):x}"'
    return any(line.startswith("etcd_network_active_peers{") and remote in line
               and line.rsplit(" ", 1)[-1].strip() not in ("0", "0.0")
               for line in text.splitlines())


def api(client_url: str, call: str, body: Mapping[str, Any] | None = None) -> Any:
    """One call of etcd's v3 JSON gateway (POST /v3/cluster/member/list, …)."""
    req = urllib.request.Request(f"{client_url}/v3/{call}",
                                 data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=API_TIMEOUT) as r:
        return json.loads(r.read() or b"{}")


class Etcd(Controller):
    name = "etcd"
    after = ("control-plane", "ospf")
    period = 5.0

    def __init__(self, cfg: NodeConfig, slots: Slots, ospf: Ospf,
                 runner: Runner | None) -> None:
        """runner None: this node runs no member (a lab with an etcd of its own)."""
        self.cfg, self.slots, self.ospf, self.runner = cfg, slots, ospf, runner
        # Named as every member is, by the hostname its loopback gives (the node's).
        self.me = Member(plan.hostname_of(cfg.node.loopback), cfg.node.loopback)
        self.token = etcd.cluster_token(cfg.site.name, cfg.site.mesh.ula)
        self.state = "no slot"
        self.members: tuple[str, ...] = ()  # names in the cluster, as last listed
        self.seen: tuple[tuple[int, Member], ...] = ()  # the holders, as last seen
        self.seen_since = 0.0

    def next_run(self) -> float | None:
        return 1.0 if self.slots.slot is not None and self.state != "running" else self.period

    def holders(self) -> dict[int, Member] | None:
        """Every slot holder as an etcd member, or None while one's loopback is unknown."""
        by_router = self.ospf.view.loopbacks(plan.loopback_subnet(self.cfg.site.mesh.ula))
        out = {}
        for slot, router in self.slots.holders().items():
            if router == self.cfg.node.router_id:
                out[slot] = self.me
            elif router in by_router:
                out[slot] = Member(plan.hostname_of(by_router[router]), by_router[router])
            else:
                return None
        return out

    def reconcile(self) -> bool:
        before = (self.state, self.members)
        data = self.cfg.paths.etcd_data
        if self.runner is None:
            self.state = "off"
            return before != (self.state, self.members)
        if self.slots.slot is None:
            if self.runner.running():
                log.info("stopping etcd: this node holds no control-plane slot")
                self.runner.stop()
            if data.exists():
                shutil.rmtree(data)  # its member was, or will be, replaced
            self.state, self.members = "no slot", ()
            return before != (self.state, self.members)
        if not self.cfg.paths.etcd_binary.exists():
            self.state = f"not installed ({self.cfg.paths.etcd_binary})"
            return before != (self.state, self.members)
        if self.runner.running():
            try:
                self._list(self.me.client_url)
                self.state = "running"
            except (OSError, ValueError) as e:
                self.state = f"running, not answering yet ({e})"
            return before != (self.state, self.members)
        if (data / "member" / "wal").is_dir():  # etcd writes its log once it has joined
            log.info("starting etcd member %s from its data", self.me.name)
            self._start({self.me.name: self.me.peer_url}, "existing")
            return True
        if data.exists():
            shutil.rmtree(data)  # a start that failed before joining: begin afresh
        holders = self.holders()
        if holders is None:
            self.state = "waiting for the slot holders' loopbacks"
            return before != (self.state, self.members)
        now = time.monotonic()
        seen = tuple(sorted(holders.items(), key=lambda x: x[0]))
        if seen != self.seen:
            self.seen, self.seen_since = seen, now
        others = [m for m in holders.values() if m != self.me]
        running = []
        for m in others:
            try:
                members = self._list(m.client_url)
            except (OSError, ValueError):
                if _answers(m.client_url):
                    running.append(m.name)
                continue
            self._join(m, members, holders)
            return True
        if running:
            # Members run but cannot say who is in the cluster: it has no quorum. Never
            # found another cluster beside it (that would be a second, empty one).
            self.state = f"waiting: the cluster of {', '.join(running)} has no quorum"
            return before != (self.state, self.members)
        if len(holders) < self.cfg.site.control_plane.count:
            self.state = (f"waiting for every slot to be held ({len(holders)} of "
                          f"{self.cfg.site.control_plane.count})")
            return before != (self.state, self.members)
        if now - self.seen_since < FOUND_AFTER:
            self.state = "waiting for the slot holders to settle"
            return before != (self.state, self.members)
        cluster = {m.name: m.peer_url for m in holders.values()}
        log.info("founding the etcd cluster with %s", ", ".join(sorted(cluster)))
        self._start(cluster, "new")
        return True

    def _list(self, client_url: str) -> list[dict[str, Any]]:
        members: list[dict[str, Any]] = api(client_url, "cluster/member/list").get("members", [])
        self.members = tuple(sorted(str(x.get("name") or "(starting)") for x in members))
        return members

    def _join(self, via: Member, members: list[dict[str, Any]],
              holders: Mapping[int, Member]) -> None:
        """Join the running cluster through `via`: replace members no holder runs."""
        wanted = {m.peer_url for m in holders.values()}
        for x in members:
            urls = set(x.get("peerURLs", []))
            if not urls & wanted:
                log.warning("removing etcd member %s (%s): its node holds no slot any more",
                            x.get("name") or x.get("ID"), ", ".join(sorted(urls)))
                api(via.client_url, "cluster/member/remove", {"ID": x["ID"]})
        mine = [x for x in members if self.me.peer_url in x.get("peerURLs", [])]
        if mine and mine[0].get("name"):
            # A member of this node's that has run, but this node has no data for it
            # (a netbooted node keeps /var in RAM): etcd needs it removed and added.
            # Unless it runs: then another PC has this node's identity (a twin, or
            # cloned hardware ids), and removing it would take a healthy member out.
            if self._alive_anywhere(holders, str(mine[0]["ID"])):
                raise RuntimeError(
                    f"an etcd member with this node's address ({self.me.peer_url}) runs "
                    f"elsewhere: another PC has this node's identity; not joining")
            log.warning("re-adding etcd member %s: its data is gone", self.me.name)
            api(via.client_url, "cluster/member/remove", {"ID": mine[0]["ID"]})
            mine = []
        if not mine:
            log.info("adding this node to the etcd cluster through %s", via.name)
            api(via.client_url, "cluster/member/add", {"peerURLs": [self.me.peer_url]})
        members = api(via.client_url, "cluster/member/list").get("members", [])
        cluster = {}
        for x in members:  # every member, started or not (those have no name yet)
            urls = x.get("peerURLs", [])
            if urls:
                cluster[_name_of(urls[0])] = urls[0]
        self._start(cluster, "existing")

    def _alive_anywhere(self, holders: Mapping[int, Member], member_id: str) -> bool:
        """Whether any other holder's member is connected to member `member_id`.
        All are asked: a twin announces its double's address, so one of them may
        be routed to the twin (where nothing listens) and see no connection."""
        answered = 0
        for m in holders.values():
            if m == self.me:
                continue
            try:
                if peer_active(m.client_url, member_id):
                    return True
                answered += 1
            except (OSError, ValueError):
                continue
        if not answered:
            raise RuntimeError("no other etcd member says whether this node's old member "
                               "still runs; not joining yet")
        return False

    def _start(self, cluster: Mapping[str, str], state: str) -> None:
        data = self.cfg.paths.etcd_data
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        assert self.runner is not None  # reconcile returns before, without one
        cp = self.cfg.site.control_plane
        self.runner.start(etcd.environment(self.me, cluster, state, data, self.token,
                                           cp.etcd_heartbeat_ms, cp.etcd_election_ms))
        self.state = "starting"

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()

    def report(self) -> dict[str, Any]:
        return {"state": self.state, "members": list(self.members)}
