"""A node without the site (netbooted) asks the neighbour that booted it to join.

The runtime then runs only what needs no site: the links (and the management
NIC's DHCP), this controller and a status. The neighbour serving this node sends
router advertisements on the cable (dnsmasq, firstboot.provision); their source
is where the request goes: POST /join with the hardware identity and a fresh
X25519 key (mesh.join), then GET /join/ID until the site's policy or an operator
approves it. The site arrives sealed to the key, goes to RAM (root only) with
the netboot recipe (so this node can serve its own neighbours in turn), and the
runtime starts again with it.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import struct
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firstboot import hardware, netboot, status
from firstboot.files import write_atomic
from firstboot.neighbours import request
from firstboot.node import Links
from firstboot.paths import NodePaths
from firstboot.runtime import Controller
from firstboot.status import LinkStatus, NodeStatus, Stage
from mesh import join, plan
from mesh.plan import HardwareIdentity
from mesh.provision import HTTP_PORT
from mesh.site import SiteError, parse_site

log = logging.getLogger("kubermesh.join")

ND_ROUTER_SOLICIT, ND_ROUTER_ADVERT = 133, 134
ICMP6_FILTER = 1  # netinet/icmp6.h


@dataclass(frozen=True)
class JoinConfig:
    """What a node without a site knows: its hardware, paths and NIC policy."""

    hw: HardwareIdentity
    node_id: str
    macs: tuple[str, ...]
    paths: NodePaths
    not_mesh: tuple[str, ...] = ()
    virtual_links: bool = False


def join_config(paths: NodePaths, hw: HardwareIdentity | None, not_mesh: tuple[str, ...],
                virtual_links: bool) -> JoinConfig:
    hw = hw or hardware.identity(paths.sysfs)
    macs = tuple(sorted(n.mac for n in hardware.nics(paths.sysfs) if n.permanent))
    return JoinConfig(hw, plan.node_hash(hw)[:8].hex(), macs, paths, not_mesh, virtual_links)


class RouterListener:
    """Router advertisements on the mesh links, heard on a raw ICMPv6 socket (the
    kernel itself ignores them there: accept_ra is off): link -> router address."""

    def __init__(self, post: Callable[[str], None]) -> None:
        self.post = post
        self.routers: dict[str, str] = {}
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        # Only RAs: a filter of 8 words, a bit set per type that is *blocked*.
        blocked = [0xFFFFFFFF] * 8
        blocked[ND_ROUTER_ADVERT >> 5] &= ~(1 << (ND_ROUTER_ADVERT & 31))
        self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        self._stop_r, self._stop_w = socket.socketpair()
        self.thread = threading.Thread(target=self._listen, name="join-ra", daemon=True)
        self.thread.start()

    def forget(self, link: str) -> None:
        """Drop link's router (it refused, or is gone) until it advertises again."""
        with self.lock:
            self.routers.pop(link, None)

    def solicit(self, link: str) -> None:
        """A router solicitation on link, so that a serving neighbour answers now."""
        try:
            index = socket.if_nametoindex(link)
            self.sock.sendto(bytes([ND_ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0]),
                             ("ff02::2", 0, 0, index))
        except OSError as e:
            log.debug("router solicitation on %s: %s", link, e)

    def _listen(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            data, (addr, _port, _flow, scope) = self.sock.recvfrom(2048)
            if not data or data[0] != ND_ROUTER_ADVERT or not addr.startswith("fe80:"):
                continue
            try:
                link = socket.if_indextoname(scope)
            except OSError:
                continue
            router = addr.split("%")[0]  # Python scopes link-local addresses
            with self.lock:
                new = self.routers.get(link) != router
                self.routers[link] = router
            if new:
                self.post("join")

    def close(self) -> None:
        self._stop_w.send(b"x")
        self.thread.join(5)
        for s in (self.sock, self._stop_r, self._stop_w):
            s.close()


class Join(Controller):
    name = "join"
    after = ("links",)
    period = 3.0

    def __init__(self, cfg: JoinConfig, links: Links, done: Callable[[], None],
                 routers: Callable[[], dict[str, str]], solicit: Callable[[str], None],
                 port: int = HTTP_PORT, forget: Callable[[str], None] = lambda _: None) -> None:
        self.cfg, self.links, self.done = cfg, links, done
        self.routers, self.solicit, self.port, self.forget = routers, solicit, port, forget
        self.key, public = join.new_key()
        self.request = join.JoinRequest(cfg.node_id, str(cfg.hw), cfg.macs, public)
        self.server = ""  # host%link of the neighbour that holds the request
        self.state = "looking for a serving neighbour"
        self.solicited: set[str] = set()

    def reconcile(self) -> bool:
        before = self.state
        if not self.server:
            # Only the mesh links' routers: the management NIC may hear one too (a
            # site's LAN, QEMU's user network), and it holds no join request.
            mesh = self.links.names
            routers = {link: addr for link, addr in self.routers().items() if link in mesh}
            for link in mesh:
                if link not in self.solicited and link not in routers:
                    self.solicit(link)
                    self.solicited.add(link)
            if not routers:
                self._say("looking for a serving neighbour on "
                          + (", ".join(mesh) or "no mesh link"))
                return before != self.state
            self._ask(routers)
        try:
            code, body = request(self.server, "GET", f"/join/{self.cfg.node_id}",
                                 port=self.port)
        except OSError as e:  # gone (unplugged, rebooted): ask whoever serves next
            server, self.server = self.server, ""
            raise RuntimeError(f"join state from {server}: {e}") from None
        if code == 404:  # the neighbour restarted and forgot: ask again
            self.server = ""
            return True
        if code != 200:
            raise RuntimeError(f"join state from {self.server}: HTTP {code} {body[:200]!r}")
        answer = json.loads(body)
        if answer.get("state") != "approved" or "sealed" not in answer:
            self._say(f"waiting for approval from {self.server} (kubermesh nodes approve "
                      f"{self.cfg.node_id}, on any node; key {self.request.fingerprint})")
            return before != self.state
        self._take(answer["sealed"])
        return True

    def _ask(self, routers: dict[str, str]) -> None:
        """POST the request to the first serving neighbour that takes it."""
        refused = []
        for link, addr in sorted(routers.items()):
            host = f"{addr}%{link}" if addr.startswith("fe80:") else addr
            try:
                code, body = request(host, "POST", "/join", self.request.to_json(),
                                     port=self.port)
            except OSError as e:
                refused.append(f"{host}: {e}")
                self.forget(link)  # asked again when it advertises again
                self.solicited.discard(link)
                continue
            if code != 200:
                refused.append(f"{host}: HTTP {code} {body[:200]!r}")
                self.forget(link)
                self.solicited.discard(link)
                continue
            self.server = host
            self._say(f"asked {self.server} to join as {self.cfg.node_id}: "
                      f"{json.loads(body)['state']}")
            return
        self._say("no serving neighbour took the join request")
        raise RuntimeError("join request: " + "; ".join(refused))

    def _take(self, sealed: Any) -> None:
        text = join.open_sealed(self.key, sealed, self.cfg.node_id.encode())
        try:
            site = parse_site(tomllib.loads(text.decode()), f"the site from {self.server}")
        except (SiteError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise RuntimeError(f"the site from {self.server} is not valid: {e}") from None
        code, recipe = request(self.server, "GET", "/netboot.recipe", port=self.port)
        if code == 200:
            netboot.decode(recipe)  # well-formed; what it assembles is checked when served
            write_atomic(self.cfg.paths.netboot_recipe, recipe, 0o644)
        else:
            log.warning("no netboot recipe from %s (HTTP %d): this node will not serve its "
                        "own neighbours", self.server, code)
        target = self.cfg.paths.site.resolve()  # /etc's link into RAM, on a node
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, text, 0o600)
        self._say(f"approved: the site {site.name!r} from {self.server} is in {target}")
        self.done()

    def _say(self, state: str) -> None:
        if state != self.state:
            log.info("join: %s", state, extra={"fields": {"join": state}})
        self.state = state



class JoinStatus(Controller):
    """The status of a node without a site: its identity, links and join state."""

    name = "status"
    after = ("links", "join")
    period = 2.0

    def __init__(self, cfg: JoinConfig, links: Links, joiner: Join,
                 errors: Callable[[], dict[str, str]] = dict) -> None:
        self.cfg, self.links, self.joiner, self.errors = cfg, links, joiner, errors

    def reconcile(self) -> bool:
        links = tuple(LinkStatus(link.name, link.carrier, "", "") for link in self.links.links)
        st = NodeStatus(node_id=self.cfg.node_id, hostname=socket.gethostname(),
                        identity=str(self.cfg.hw), loopback="", router_id="",
                        stage=Stage.BOOTING, links=links, updated=time.time(),
                        join=self.joiner.state,
                        errors=tuple(f"{n}: {e}" for n, e in self.errors().items()))
        status.write(st, self.cfg.paths.status)
        return False

    def line(self) -> str:
        return f"joining: {self.joiner.state}"
