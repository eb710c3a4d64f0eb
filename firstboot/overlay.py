"""The overlay agent: IPv4 pods carried over the IPv6 mesh, with no tunnels.

    python -m firstboot.overlay --site /etc/kubermesh/site.toml \
        --node-id ID --router-id A.B.C.D [--state FILE] [--cni-dir DIR]

One loop, list then watch: it reads the kernel's state in full at start, after
a link or address change, after a failure and every minute; in between it
follows the IPv6 route messages themselves (a pass costs what changed, not a
dump of every route: that matters when one SPF run moves hundreds of routes),
and 2 s after a burst of them one full read confirms the result.
  1. the kernel's IPv6 routes to pod-block claims (mesh.pods: a /128 in
     <ula>:2::/64 that embeds an IPv4 block and its owner's router-id);
  2. choose this node's block (keep it unless a lower router-id claims it too;
     else the first free candidate of its id), and announce it: the claim /128
     and the node's IPv4 /32 on `lo`, which ospf6d announces;
  3. for every other block, an IPv4 route with the same IPv6 next hops as the
     keeper's claim (`via inet6 fe80::… dev IF`, every ECMP path), and no
     route for a block whose claim is gone;
  4. the CNI configuration (bridge + host-local) for the block.
Each route and address is applied on its own: one that fails is logged and
retried a second later, and does not hold up the others.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

from firstboot.runtime import NetlinkWatch, Stop, setup_logging, stop_on_signals
from firstboot.systemd import notify
from mesh import pods
from mesh.pods import BlockClaim
from mesh.site import Site, SiteError, load_site

# The routing protocol number marking the IPv4 routes this agent owns (unassigned in
# /etc/iproute2/rt_protos and FRR's list), so it never touches anyone else's routes.
RTPROT_KUBERMESH = 77
# Above the kernel's connected routes (metric 0): the CNI bridge's own block wins.
ROUTE_METRIC = 20
RETRY = 1.0
RESYNC = 60.0  # seconds between full reads of the kernel's state, as a safety net
# After a burst of changes applied from messages alone, one full read confirms them.
VERIFY = 2.0
# A node with no block chooses once it has had routes for this long: SPF installs
# the routes of a freshly synchronised LSDB within a moment of each other.
ATTACHED_FOR = 1.0
CNI_FILE = "10-kubermesh.conflist"
# IPv6 routes drive it; links and addresses too. Not IPv4 routes: on a change it
# rewrites dozens, and reading back every echo cost more CPU than the change itself.
# (The kernel drops routes of a link that goes down silently anyway: link events
# and the full read of each pass cover that.)
WATCHED = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE

log = logging.getLogger("kubermesh.overlay")


@dataclass(frozen=True, order=True)
class NextHop:
    gateway: IPv6Address  # a neighbour's link-local address
    oif: int


Hops = tuple[NextHop, ...]


@dataclass(frozen=True)
class Config:
    site: Site
    node_id: str
    router_id: IPv4Address
    state_file: Path
    cni_dir: Path
    cni_data_dir: Path
    settle: float  # a fresh node waits this long at most to learn others' claims


# --- pure parts: what the kernel says, what it should say


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name) if hasattr(msg, "get_attr") else dict(msg["attrs"]).get(name)


def route_hops(route: Any) -> Hops:
    """Next hops of a route message: RTA_GATEWAY (IPv6) or RTA_VIA (IPv4 via inet6),
    single or in RTA_MULTIPATH."""
    hops = []
    multipath = _attr(route, "RTA_MULTIPATH")
    for h in multipath if multipath else [route]:
        oif = h.get("oif") or _attr(h, "RTA_OIF")
        gw = _attr(h, "RTA_GATEWAY")
        via = _attr(h, "RTA_VIA")
        if gw is None and via is not None and via["family"] == socket.AF_INET6:
            gw = via["addr"]
        if gw is not None and oif:
            hops.append(NextHop(IPv6Address(gw), int(oif)))
    return tuple(sorted(hops))


def desired_routes(claims: Mapping[IPv6Address, BlockClaim], hops: Mapping[IPv6Address, Hops],
                   mine: IPv4Network | None) -> dict[IPv4Network, Hops]:
    return {block: hops[addr] for block, addr in pods.routes_by_block(claims, mine).items()
            if hops.get(addr)}


def cni_config(block: IPv4Network, data_dir: Path) -> dict[str, Any]:
    """CNI network for the node's block: a bridge whose gateway is the node's own
    address, host-local IPAM from the rest of the block. No masquerade: pod
    addresses are routed across the mesh as they are."""
    gateway = pods.node_address(block)
    return {
        "cniVersion": "1.0.0",
        "name": "kubermesh",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(block), "gateway": str(gateway),
                             "rangeStart": str(gateway + 1)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(data_dir),
            },
        }],
    }


# --- the agent


class Overlay:
    def __init__(self, cfg: Config, ipr: IPRoute) -> None:
        self.cfg = cfg
        self.ipr = ipr
        self.ula = cfg.site.mesh.ula
        self.pod_subnet = pods.pod_block_subnet(self.ula)
        self.block: IPv4Network | None = self._remembered()
        self.started = time.monotonic()
        self.attached_since: float | None = None
        self.failures: set[str] = set()
        self.ready = False
        # What the kernel has, as last read or told by netlink.
        self.claims: dict[IPv6Address, BlockClaim] = {}
        self.hops: dict[IPv6Address, Hops] = {}
        self.attached = False
        self.installed: dict[IPv4Network, Hops] | None = None  # None: read it again

    def _remembered(self) -> IPv4Network | None:
        try:
            data = json.loads(self.cfg.state_file.read_text())
            block = IPv4Network(data["block"])
            pods.block_index(self.cfg.site.pods, block)  # still a block of this site
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring %s: %s", self.cfg.state_file, e)
            return None
        log.info("remembered block %s", block)
        return block

    def _remember(self, block: IPv4Network) -> None:
        self.cfg.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cfg.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"block": str(block)}) + "\n")
        tmp.replace(self.cfg.state_file)

    # what the kernel has

    def observe(self) -> None:
        """Read every IPv6 route: others' claims, their next hops, and whether any
        route of the site exists (the node is on the mesh)."""
        self.claims, self.hops, self.attached = {}, {}, False
        for r in self.ipr.get_routes(family=socket.AF_INET6, table=254):
            self.learn(r, "RTM_NEWROUTE")

    def learn(self, r: Any, event: str) -> None:
        """Take one IPv6 route (from a dump or a netlink message) into the model."""
        if r["dst_len"] != 128 or _attr(r, "RTA_DST") is None:
            return
        dst = IPv6Address(_attr(r, "RTA_DST"))
        if dst in self.ula and event == "RTM_NEWROUTE":
            self.attached = True
        claim = pods.parse_claim(self.ula, self.cfg.site.pods, dst)
        if claim is None or claim.owner == self.cfg.router_id:
            return
        if event == "RTM_NEWROUTE" and r["type"] == 1 and r.get("table", 254) == 254:
            self.claims[dst] = claim
            self.hops[dst] = route_hops(r)
        elif event == "RTM_DELROUTE":
            self.claims.pop(dst, None)
            self.hops.pop(dst, None)

    def installed_routes(self) -> dict[IPv4Network, Hops]:
        out = {}
        for r in self.ipr.get_routes(family=socket.AF_INET, table=254, proto=RTPROT_KUBERMESH):
            if r["proto"] != RTPROT_KUBERMESH:
                continue
            out[IPv4Network((_attr(r, "RTA_DST"), r["dst_len"]))] = route_hops(r)
        return out

    def lo_addresses(self) -> set[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        lo = self.ipr.link_lookup(ifname="lo")[0]
        return {ipaddress.ip_interface(f"{_attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}")
                for a in self.ipr.get_addr(index=lo)}

    # one pass

    def reconcile(self, full: bool = True) -> None:
        """One pass. `full` reads the kernel's routes and addresses afresh; otherwise
        the model as netlink messages left it is trusted."""
        self.failures.clear()
        if full:
            self.observe()
            self.installed = None
        now = time.monotonic()
        if self.attached and self.attached_since is None:
            self.attached_since = now
        if self.block is None and now - self.started < self.cfg.settle and (
                self.attached_since is None or now - self.attached_since < ATTACHED_FOR):
            return  # others' claims are not all known yet: choose a moment later
        before = self.block
        self._choose(list(self.claims.values()))
        # Routes first: after a failure elsewhere in the mesh, they are what traffic waits for.
        self._apply_routes(desired_routes(self.claims, self.hops, self.block))
        if full or self.block != before:
            self._apply_addresses()
        if self.block is not None and not self.failures and not self.ready:
            self.ready = True
            notify(READY="1", STATUS=f"pod block {self.block}")
            log.info("ready: pod block %s, node address %s", self.block,
                     pods.node_address(self.block))

    def _choose(self, others: list[BlockClaim]) -> None:
        block = pods.choose_block(self.cfg.node_id, self.cfg.router_id, self.cfg.site.pods,
                                  others, self.block)
        if block == self.block:
            return
        if self.block is not None:
            rival = pods.owners(c for c in others if c.block == self.block)[self.block]
            log.warning("yielding block %s to router-id %s (lower than ours, %s); taking %s",
                        self.block, rival, self.cfg.router_id, block)
        else:
            log.info("claiming block %s", block)
        self.block = block
        self._remember(block)
        self._write_cni(block)
        notify(STATUS=f"pod block {block}")

    def _write_cni(self, block: IPv4Network) -> None:
        try:
            self.cfg.cni_dir.mkdir(parents=True, exist_ok=True)
            path = self.cfg.cni_dir / CNI_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cni_config(block, self.cfg.cni_data_dir), indent=2) + "\n")
            tmp.replace(path)
        except OSError as e:
            self._failed(f"CNI config in {self.cfg.cni_dir}", e)

    def _apply_addresses(self) -> None:
        if self.block is None:
            return
        claim = pods.claim_address(self.ula, BlockClaim(self.block, self.cfg.router_id))
        want: set[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = {
            ipaddress.IPv6Interface(f"{claim}/128"),
            ipaddress.IPv4Interface(f"{pods.node_address(self.block)}/32"),
        }
        try:
            have = self.lo_addresses()
            lo = self.ipr.link_lookup(ifname="lo")[0]
        except Exception as e:
            self._failed("reading lo's addresses", e)
            return
        ours = {a for a in have
                if a.ip in self.pod_subnet  # claims
                or (a.ip in self.cfg.site.pods.range and a.network.prefixlen == 32)}
        for a in sorted(want - have, key=str):
            self._netlink(f"add {a} on lo", self.ipr.addr, "add", index=lo, address=str(a.ip),
                          prefixlen=a.network.prefixlen)
        for a in sorted(ours - want, key=str):  # a block given up, or a stale one
            self._netlink(f"remove {a} from lo", self.ipr.addr, "del", index=lo,
                          address=str(a.ip), prefixlen=a.network.prefixlen)

    def _apply_routes(self, want: dict[IPv4Network, Hops]) -> None:
        if self.installed is None:
            try:
                self.installed = self.installed_routes()
            except Exception as e:
                self._failed("reading IPv4 routes", e)
                return
        have = self.installed
        for block, hops in sorted(want.items()):
            if have.get(block) == hops:
                continue
            multipath = [{"oif": h.oif, "via": {"family": socket.AF_INET6,
                                                "addr": str(h.gateway)}} for h in hops]
            if self._netlink(f"route {block} via "
                             f"{', '.join(f'{h.gateway}%{h.oif}' for h in hops)}",
                             self.ipr.route, "replace", dst=str(block), multipath=multipath,
                             proto=RTPROT_KUBERMESH, priority=ROUTE_METRIC, table=254):
                log.debug("%s route %s", "changed" if block in have else "added", block)
                have[block] = hops
            else:
                have.pop(block, None)  # unknown now: the retry's full read will tell
        for block in sorted(set(have) - set(want)):
            if self._netlink(f"remove route {block}", self.ipr.route, "del", dst=str(block),
                             proto=RTPROT_KUBERMESH, priority=ROUTE_METRIC, table=254):
                del have[block]

    def _netlink(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except Exception as e:
            self._failed(what, e)
            return False

    def _failed(self, what: str, e: BaseException) -> None:
        self.failures.add(what)
        log.error("%s failed (retrying in %.0f s): %s", what, RETRY, e)

    def relevant(self, msg: Any) -> bool:
        """Whether a netlink message can change what this agent should do. Called in
        the watch thread; it reads `block` only."""
        event = msg.get("event")
        if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            if msg["family"] == socket.AF_INET:
                # Not the echo of a route it installed itself; its deletion counts.
                return bool(msg["proto"] != RTPROT_KUBERMESH or event == "RTM_DELROUTE")
            dst = _attr(msg, "RTA_DST")
            if dst is None or msg["dst_len"] != 128:
                return False
            addr = IPv6Address(dst)
            return addr in self.pod_subnet or (self.block is None and addr in self.ula)
        # Its own addresses appearing, no; anything removed from lo, links, nexthops: yes.
        return bool(event != "RTM_NEWADDR")

    def run(self, watch: NetlinkWatch) -> None:
        full, last_full, verify_at = True, 0.0, None
        while True:
            start = time.monotonic()
            try:
                self.reconcile(full)
                log.debug("%s pass took %.0f ms", "full" if full else "event",
                          (time.monotonic() - start) * 1000)
            except Exception as e:  # a bug or a kernel surprise: say so, try again
                log.exception("reconcile failed")
                self._failed("reconcile", e)
            if full:
                last_full, verify_at = start, None
            elif verify_at is None:
                verify_at = start + VERIFY
            retry = bool(self.failures) or self.block is None
            due = last_full + RESYNC if verify_at is None else verify_at
            timeout = RETRY if retry else max(0.0, due - time.monotonic())
            batch = watch.wait(timeout)
            # Anything but route messages (links, addresses), a timeout (retry or
            # resync), or a failure: read everything again. Else apply the messages.
            full = not batch or retry or any(not is_route(m) for m in batch)
            if not full:
                for m in batch:
                    self.learn(m, m["event"])


def is_route(msg: Any) -> bool:
    return msg.get("event") in ("RTM_NEWROUTE", "RTM_DELROUTE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m firstboot.overlay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", type=Path, default=Path("/etc/kubermesh/site.toml"))
    p.add_argument("--node-id", required=True, help="the node id (mesh.plan)")
    p.add_argument("--router-id", type=IPv4Address, required=True,
                   help="the node's OSPF router-id (mesh.plan)")
    p.add_argument("--state", type=Path, default=Path("/var/lib/kubermesh/overlay.json"),
                   help="where the block is remembered across restarts")
    p.add_argument("--cni-dir", type=Path, default=Path("/run/kubermesh/cni/net.d"))
    p.add_argument("--cni-data-dir", type=Path, default=Path("/var/lib/cni/networks"),
                   help="host-local IPAM's allocation records")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds a node with no block waits for the mesh before choosing one")
    p.add_argument("--debug", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("overlay", args.debug)
    try:
        site = load_site(args.site)
    except SiteError as e:
        log.error("%s", e)
        return 1
    cfg = Config(site, args.node_id, args.router_id, args.state, args.cni_dir,
                 args.cni_data_dir, args.settle)
    stop_on_signals()
    log.info("node %s, router-id %s, pod range %s in /%d blocks", cfg.node_id, cfg.router_id,
             site.pods.range, site.pods.block_prefix)
    try:
        with IPRoute() as ipr:
            # Left in place on exit, on purpose: pods keep their routes while the
            # agent restarts, and the next run reconciles whatever changed meanwhile.
            overlay = Overlay(cfg, ipr)
            overlay.run(NetlinkWatch(overlay.relevant, groups=WATCHED))
    except Stop as e:
        log.info("stopping on %s", e)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    raise SystemExit(main())
