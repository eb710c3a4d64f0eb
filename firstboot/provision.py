"""Serving neighbours that are not members yet: netboot, then the join request.

On each mesh link with carrier and no Full OSPFv3 adjacency the node puts the
link's provisioning address (mesh.plan) on it and offers, through dnsmasq,
router advertisements and stateful DHCPv6 with the UEFI HTTP boot URL; its own
HTTP server (stdlib, in a thread of the runtime) streams the signed netboot UKI
assembled from the node's own partitions (firstboot.netboot) and takes join
requests. Serving stops on a link once its neighbour is a Full member.

HTTP, on HTTP_PORT (the packet filter admits it from served links and members):
    GET  /kubermesh.efi         the netboot UKI the node itself runs
    GET  /netboot.recipe        a self-contained recipe of it (for a netbooted
                                neighbour that will serve it in turn)
    POST /join                  a newcomer's request (mesh.join.JoinRequest)
    GET  /join                  every request this node holds (kubermesh nodes)
    GET  /join/ID               its state; once approved, the site sealed to its key
    POST /join/ID/approve       a member's approval ({"mac": mesh.join.approval_mac})
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from firstboot import netboot
from firstboot.files import write_atomic
from firstboot.node import Links, NodeConfig
from firstboot.ospf import Ospf
from firstboot.paths import NodePaths
from firstboot.runtime import Controller
from firstboot.services import end
from mesh import join, plan, provision
from mesh.provision import HTTP_PORT, ServedLink

log = logging.getLogger("kubermesh.provision")

IFA_F_NODAD = 0x02
MAX_BODY = 64 << 10
MAX_REQUESTS = 256  # held at once; the oldest pending one goes first


@dataclass
class Served:
    client: str  # its address (and link)
    path: str
    bytes: int = 0
    done: bool = False
    at: float = field(default_factory=time.time)
    seconds: float = 0.0  # how long the transfer took (so far)


@dataclass
class Request:
    request: join.JoinRequest
    client: str
    state: str  # pending, approved
    since: float = field(default_factory=time.time)
    fetched: bool = False  # the approved node took its sealed site

    def summary(self) -> dict[str, Any]:
        r = self.request
        return {"id": r.node_id, "hardware": r.hardware, "macs": list(r.macs),
                "key": r.fingerprint, "client": self.client, "state": self.state,
                "since": self.since, "fetched": self.fetched}


def _cmdline_device(value: str, dev: Path) -> Path:
    if value.startswith("PARTUUID="):
        return dev / "disk/by-partuuid" / value.removeprefix("PARTUUID=").lower()
    return Path(value)


def _sibling(device: Path, name: str, sysfs: Path, dev: Path) -> Path | None:
    """The partition named `name` on the disk that holds partition `device`."""
    part = device.resolve().name
    holder = sysfs / "class/block" / part
    if not (holder / "partition").exists():
        return None
    disk = holder.resolve().parent
    for p in sorted(disk.iterdir()):
        uevent = p / "uevent"
        if (p / "partition").exists() and uevent.exists() and \
                f"PARTNAME={name}\n" in uevent.read_text():
            return dev / p.name
    return None


def netboot_sources(paths: NodePaths) -> tuple[netboot.Recipe, dict[str, Path]] | str:
    """The recipe of what this node runs and where its segments are; or why it cannot
    serve (a lab node, a node netbooted without a recipe yet, …)."""
    try:
        args = dict(a.split("=", 1) for a in paths.cmdline.read_text().split() if "=" in a)
    except FileNotFoundError:
        return f"no {paths.cmdline}"
    data, hashes = args.get("systemd.verity_root_data"), args.get("systemd.verity_root_hash")
    if not data or not hashes:
        return "the root is not a dm-verity image (no systemd.verity_root_data)"
    root, verity = _cmdline_device(data, paths.dev), _cmdline_device(hashes, paths.dev)
    sources = {"root": root, "verity": verity}
    if args.get("kubermesh.netroot") == "1":
        recipe_file = paths.netboot_recipe
        if not recipe_file.exists():
            return "netbooted, and no recipe from the neighbour that booted it yet"
    else:
        on_disk = _sibling(root, "kubermesh-netboot", paths.sysfs, paths.dev)
        esp = _sibling(root, "ESP", paths.sysfs, paths.dev)
        if on_disk is None or esp is None:
            return f"no kubermesh-netboot and ESP partitions beside {root}"
        recipe_file, sources["esp"] = on_disk, esp
    try:
        recipe = netboot.decode(recipe_file.read_bytes())  # the partition: a few KiB of it
    except (OSError, netboot.RecipeError) as e:
        return f"{recipe_file}: {e}"
    if missing := recipe.kinds() - {"literal"} - set(sources):
        return f"the recipe needs {', '.join(sorted(missing))}, which this node lacks"
    return recipe, sources


class Provision(Controller):
    """RA + DHCPv6 (dnsmasq) and HTTP for the neighbours that are not members."""

    name = "provision"
    after = ("links", "ospf")
    period = 10.0

    def __init__(self, cfg: NodeConfig, links: Links, ospf: Ospf, ipr: Any,
                 dnsmasq: str = "dnsmasq") -> None:
        self.cfg, self.links, self.ospf, self.ipr = cfg, links, ospf, ipr
        self.dnsmasq_bin = dnsmasq
        self.dir = cfg.paths.run_dir / "provision"
        self.serving: tuple[ServedLink, ...] = ()
        self.why_not = ""  # why this node serves nothing, when it cannot
        self.lock = threading.Lock()
        self.served: list[Served] = []
        self.requests: dict[str, Request] = {}
        self.dnsmasq: subprocess.Popen[bytes] | None = None
        self.dnsmasq_conf = ""
        self.http: ThreadingHTTPServer | None = None
        self.source: tuple[netboot.Recipe, dict[str, Path]] | None = None
        self.port = HTTP_PORT

    # --- desired state

    def desired(self) -> tuple[ServedLink, ...]:
        full = self.ospf.view.full_links
        ula, node = self.cfg.site.mesh.ula, self.cfg.node.node_id
        return tuple(ServedLink(link.name, plan.provisioning_prefix(ula, node, link.name))
                     for link in self.links.links if link.carrier and link.name not in full)

    def reconcile(self) -> bool:
        if self.source is None:
            found = netboot_sources(self.cfg.paths)
            if isinstance(found, str):
                if found != self.why_not:
                    log.info("not serving neighbours: %s", found)
                self.why_not = found
            else:
                self.source, self.why_not = found, ""
        want = self.desired() if self.source is not None else ()
        changed = want != self.serving
        old = {s.name: s for s in self.serving}
        new = {s.name: s for s in want}
        for name, s in old.items():
            if new.get(name) != s:
                self._address("del", s)
                log.info("stopped serving on %s: its neighbour is a member, or the link is down",
                         name, extra={"fields": {"link": name}})
        for name, s in new.items():
            self._address("add", s)  # again each time: someone may have flushed it
            if old.get(name) != s:
                log.info("serving netboot on %s (%s): its neighbour is not a member",
                         name, s.prefix, extra={"fields": {"link": name}})
        self.serving = want
        self._dnsmasq(want)
        # Always: members ask every node for the join requests it holds (kubermesh
        # nodes), and a node may serve again when a cable is plugged.
        self._http()
        return changed

    def _address(self, verb: str, s: ServedLink) -> None:
        index = self.ipr.link_lookup(ifname=s.name)
        if not index:
            return
        try:
            self.ipr.addr(verb, index=index[0], address=str(s.server), prefixlen=64,
                          flags=IFA_F_NODAD)
        except NetlinkError as e:
            if not (verb == "add" and e.code == 17) and not (verb == "del" and e.code == 99):
                raise RuntimeError(f"{verb} {s.server}/64 on {s.name}: {e}") from None

    def _dnsmasq(self, links: tuple[ServedLink, ...]) -> None:
        running = self.dnsmasq is not None and self.dnsmasq.poll() is None
        if not links:
            self._stop_dnsmasq()
            return
        conf = provision.render_dnsmasq(links, self.dir)
        if running and conf == self.dnsmasq_conf:
            return
        if self.dnsmasq is not None and not running:
            log.error("dnsmasq exited with status %s: starting it again (log: %s)",
                      self.dnsmasq.returncode, self.dir / "dnsmasq.log")
        self._stop_dnsmasq()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "dnsmasq.conf", conf, 0o644)
        logfile = (self.dir / "dnsmasq.log").open("ab")
        self.dnsmasq = subprocess.Popen(
            [self.dnsmasq_bin, "--keep-in-foreground", f"--conf-file={self.dir / 'dnsmasq.conf'}",
             f"--log-facility={self.dir / 'dnsmasq.log'}"],
            stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile)
        logfile.close()
        self.dnsmasq_conf = conf

    def _stop_dnsmasq(self) -> None:
        if self.dnsmasq is not None:
            end(self.dnsmasq)
            self.dnsmasq = None
            self.dnsmasq_conf = ""

    def _http(self) -> None:
        if self.http is not None:
            return
        server = _Server(("::", self.port), _Handler)
        server.provision = self
        server.timeout = 0.5  # how soon the thread notices close()
        self.http = server
        self._http_stop = threading.Event()
        self._http_thread = threading.Thread(target=self._serve, args=(server,),
                                             name="provision-http", daemon=True)
        self._http_thread.start()

    def _serve(self, server: ThreadingHTTPServer) -> None:
        # Not serve_forever(): its shutdown() waits forever if called before it ran.
        while not self._http_stop.is_set():
            server.handle_request()

    def close(self) -> None:
        for s in self.serving:
            with contextlib.suppress(RuntimeError):  # stopping: the link may be gone
                self._address("del", s)
        self.serving = ()
        self._stop_dnsmasq()
        if self.http is not None:
            self._http_stop.set()
            self._http_thread.join(5)
            self.http.server_close()
            self.http = None

    # --- what the HTTP handler calls (its threads)

    def record(self, served: Served) -> None:
        with self.lock:
            self.served = [*self.served[-49:], served]

    def join_request(self, r: join.JoinRequest, client: str) -> Request:
        site = self.cfg.site
        with self.lock:
            held = self.requests.get(r.node_id)
            if held is not None and held.request.public_key == r.public_key:
                return held
            if held is not None and held.state == "approved" and not held.fetched:
                # Only the key that was approved may take the site; a node that made
                # a new key (it rebooted) asks again once the old request is used.
                raise PermissionError(f"{r.node_id} is approved for another key")
            state = join.decide(site.join.policy, site.join.allow, r)
            if len(self.requests) >= MAX_REQUESTS:
                oldest = min(self.requests.values(), key=lambda x: x.since)
                del self.requests[oldest.request.node_id]
            held = self.requests[r.node_id] = Request(r, client, state)
        if state == "approved":
            log.info("join request from %s (%s) via %s: approved by the site's policy (%s)",
                     r.node_id, r.hardware, client, site.join.policy,
                     extra={"fields": {"join_id": r.node_id}})
        else:
            log.log(25, "join request from %s (%s) via %s: pending; approve it with "
                    "`kubermesh nodes approve %s` on any node", r.node_id, r.hardware, client,
                    r.node_id, extra={"fields": {"join_id": r.node_id}})
        return held

    def approve(self, node_id: str, mac: str) -> Request | None:
        if not join.approval_ok(self.cfg.site.secrets.ospf_key, node_id, mac):
            raise PermissionError("the approval is not signed with this site's secret")
        with self.lock:
            held = self.requests.get(node_id)
            if held is not None and held.state != "approved":
                held.state, held.since = "approved", time.time()
                log.info("join request %s approved by an operator", node_id,
                         extra={"fields": {"join_id": node_id}})
            return held

    def sealed_site(self, node_id: str) -> dict[str, Any] | None:
        with self.lock:
            held = self.requests.get(node_id)
            if held is None or held.state != "approved":
                return None
            held.fetched = True
            key = held.request.public_key
        text = self.cfg.paths.site.read_bytes()
        return join.seal(key, text, node_id.encode())

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {
                "serving": [{"link": s.name, "prefix": str(s.prefix), "url": s.boot_url}
                            for s in self.serving],
                "not_serving": self.why_not,
                "served": [vars(s).copy() for s in self.served],
                "requests": [r.summary() for r in self.requests.values()],
            }


class _Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True
    provision: Provision


_JOIN_ID = re.compile(r"^/join/([0-9a-f]{16})(/approve)?$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s: " + format, self.client_address[0], *args)

    def _client(self) -> str:
        host, _port, _flow, scope = self.client_address  # type: ignore[misc]
        return f"{host}%{socket.if_indextoname(scope)}" if scope else str(host)

    def _json(self, code: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            raise ValueError("a JSON body of at most 64 KiB")
        return json.loads(self.rfile.read(length))

    def do_GET(self) -> None:
        p = self.server.provision
        if self.path == f"/{provision.BOOT_FILE}":
            self._image()
        elif self.path == "/netboot.recipe":
            if p.source is None:
                self._json(503, {"error": p.why_not})
                return
            body = netboot.encode(netboot.self_contained(*p.source))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            p.record(Served(self._client(), self.path, len(body), True))
        elif self.path == "/join":
            self._json(200, p.report()["requests"])
        elif (m := _JOIN_ID.match(self.path)) and not m.group(2):
            sealed = p.sealed_site(m.group(1))
            with p.lock:
                held = p.requests.get(m.group(1))
            if held is None:
                self._json(404, {"error": "no such request: ask again with POST /join"})
            else:
                self._json(200, {"state": held.state, **({"sealed": sealed} if sealed else {})})
        else:
            self._json(404, {"error": f"no {self.path}"})

    def do_POST(self) -> None:
        p = self.server.provision
        try:
            data = self._body()
            if self.path == "/join":
                try:
                    held = p.join_request(join.JoinRequest.from_json(data), self._client())
                except PermissionError as e:
                    self._json(409, {"error": str(e)})
                    return
                self._json(200, {"id": held.request.node_id, "state": held.state})
            elif (m := _JOIN_ID.match(self.path)) and m.group(2):
                approved = p.approve(m.group(1), str(data.get("mac", "")))
                if approved is None:
                    self._json(404, {"error": f"no request {m.group(1)} on this node"})
                else:
                    self._json(200, approved.summary())
            else:
                self._json(404, {"error": f"no {self.path}"})
        except PermissionError as e:
            self._json(403, {"error": str(e)})
        except (ValueError, AttributeError) as e:
            self._json(400, {"error": str(e)})

    def _image(self) -> None:
        p = self.server.provision
        if p.source is None:
            self._json(503, {"error": p.why_not})
            return
        recipe, sources = p.source
        served = Served(self._client(), self.path)
        if self.command != "HEAD":
            p.record(served)
        self.send_response(200)
        self.send_header("Content-Type", "application/efi")
        self.send_header("Content-Length", str(recipe.size))
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            for data in netboot.chunks(recipe, sources):
                self.wfile.write(data)
                served.bytes += len(data)
                served.seconds = time.time() - served.at
            served.done = True
            log.info("served the netboot image to %s (%d MiB in %.0f s)", served.client,
                     served.bytes >> 20, served.seconds,
                     extra={"fields": {"client": served.client}})
        except (OSError, netboot.RecipeError) as e:
            log.warning("serving the netboot image to %s stopped after %d MiB: %s",
                        served.client, served.bytes >> 20, e)
            self.close_connection = True

    def do_HEAD(self) -> None:  # UEFI HTTP boot asks the size first
        if self.path == f"/{provision.BOOT_FILE}":
            self._image()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

