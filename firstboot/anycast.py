"""The anycast agent: a service's /128 on `lo` while the local instance is healthy.

    python -m firstboot.anycast serve --site FILE \
        --service etcd=http://[::1]:2379/health [--service apiserver=https://…/healthz]
    python -m firstboot.anycast wait --site FILE --service apiserver [--timeout 300]

`serve` probes each service given (HTTP(S) GET answered 2xx, or a TCP connect
for tcp://host:port) every --interval seconds. After --rise good probes in a
row the service's anycast address from the site goes on `lo`, and ospf6d
announces it; after --fall bad ones it is removed, and the mesh routes its
clients to the next nearest healthy instance. Each service has its own thread:
a hung probe of one delays no other. On stop, every address it manages is
withdrawn: an instance no longer watched must not attract clients.

`wait` returns once the address is reachable (a route to it, or local), for
units that need the service (the kubelet needs the apiserver).
"""

from __future__ import annotations

import argparse
import http.client
import logging
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path

from pyroute2 import IPRoute

from firstboot.runtime import NetlinkWatch, Stop, setup_logging, stop_on_signals
from firstboot.systemd import notify
from mesh.site import Site, SiteError, load_site

log = logging.getLogger("kubermesh.anycast")

@dataclass(frozen=True)
class Probe:
    """How a service's health is checked: `scheme` is http, https or tcp."""

    scheme: str
    host: str
    port: int
    path: str = "/"

    @classmethod
    def parse(cls, url: str) -> Probe:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https", "tcp") or not u.hostname:
            raise ValueError(f"{url!r}: expected http://, https:// or tcp://HOST:PORT")
        port = u.port or {"http": 80, "https": 443}.get(u.scheme)
        if port is None:
            raise ValueError(f"{url!r}: a tcp:// probe needs a port")
        return cls(u.scheme, u.hostname, port, u.path or "/")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path if self.scheme != 'tcp' else ''}"

    def check(self, timeout: float) -> str | None:
        """None if healthy, else what was wrong."""
        try:
            if self.scheme == "tcp":
                socket.create_connection((self.host, self.port), timeout=timeout).close()
                return None
            conn: http.client.HTTPConnection
            if self.scheme == "https":
                # The local instance is probed for liveness, not identity: its
                # certificate names the anycast address, not this loopback.
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                                   context=ctx)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                conn.request("GET", self.path)
                status = conn.getresponse().status
            finally:
                conn.close()
            return None if 200 <= status < 300 else f"HTTP {status}"
        except Exception as e:  # whatever went wrong, the service did not answer well
            return str(e) or type(e).__name__

class Hysteresis:
    """Healthy after `rise` good results in a row, unhealthy after `fall` bad ones."""

    def __init__(self, rise: int, fall: int, healthy: bool = False) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.rise, self.fall = rise, fall
        self.healthy = healthy
        self._run = 0  # consecutive results against the current state

    def update(self, ok: bool) -> bool:
        if ok == self.healthy:
            self._run = 0
        else:
            self._run += 1
            if self._run >= (self.rise if ok else self.fall):
                self.healthy, self._run = ok, 0
        return self.healthy

@dataclass(frozen=True)
class Service:
    name: str
    address: IPv6Address
    probe: Probe

def parse_services(site: Site, specs: list[str]) -> list[Service]:
    services = []
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep:
            raise ValueError(f"--service {spec!r}: expected NAME=URL")
        if name not in site.anycast:
            raise ValueError(f"--service {name}: the site has no anycast address for it "
                             f"(it has {', '.join(sorted(site.anycast))})")
        services.append(Service(name, site.anycast[name], Probe.parse(url)))
    return services

class Announcer:
    """The /128s on `lo`: one netlink socket, shared by the service threads."""

    def __init__(self) -> None:
        self.ipr = IPRoute()
        self.lo = self.ipr.link_lookup(ifname="lo")[0]
        self.lock = threading.Lock()

    def present(self, addr: IPv6Address) -> bool:
        with self.lock:
            return any(a.get_attr("IFA_ADDRESS") == str(addr) and a["prefixlen"] == 128
                       for a in self.ipr.get_addr(index=self.lo, family=socket.AF_INET6))

    def set(self, addr: IPv6Address, on: bool) -> None:
        if self.present(addr) == on:
            return
        with self.lock:
            self.ipr.addr("add" if on else "del", index=self.lo, address=str(addr),
                          prefixlen=128)

    def close(self) -> None:
        self.ipr.close()

def watch(svc: Service, announce: Announcer, interval: float, timeout: float, rise: int,
          fall: int, clock: Callable[[], float] = time.monotonic) -> None:
    """One service's loop: probe, hysteresis, and the address made to match."""
    # Start from what lo has: a restarted agent does not withdraw a healthy service.
    try:
        announced = announce.present(svc.address)
    except Exception as e:
        log.error("%s: reading lo's addresses failed: %s", svc.name, e)
        announced = False
    state = Hysteresis(rise, fall, healthy=announced)
    log.info("%s: probing %s every %.2f s (rise %d, fall %d); %s %s", svc.name, svc.probe,
             interval, rise, fall, svc.address, "announced" if state.healthy else "withdrawn")
    last_error: str | None = ""
    next_at = clock()
    while True:
        error = svc.probe.check(timeout)
        was = state.healthy
        healthy = state.update(error is None)
        if error != last_error and error is not None:
            log.info("%s: probe failed: %s", svc.name, error)
        last_error = error
        if healthy != was:
            log.warning("%s: %s, %s %s", svc.name, "healthy" if healthy else "unhealthy",
                        "announcing" if healthy else "withdrawing", svc.address)
        try:
            announce.set(svc.address, healthy)  # also puts back an address removed by hand
        except Exception as e:
            log.error("%s: %s %s on lo failed (retrying): %s", svc.name,
                      "adding" if healthy else "removing", svc.address, e)
        next_at += interval
        time.sleep(max(0.0, next_at - clock()))
        next_at = max(next_at, clock() - interval)  # after a long probe, do not catch up

def serve(args: argparse.Namespace, site: Site) -> int:
    try:
        services = parse_services(site, args.service)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if not services:
        log.error("no --service given: nothing to announce")
        return 2
    announce = Announcer()
    stop_on_signals()
    try:
        for svc in services:
            threading.Thread(target=watch, name=svc.name, daemon=True,
                             args=(svc, announce, args.interval, args.timeout, args.rise,
                                   args.fall)).start()
        notify(READY="1")
        while True:
            time.sleep(3600)
    except Stop as e:
        log.info("stopping on %s: withdrawing %s", e,
                 ", ".join(str(s.address) for s in services))
        for svc in services:
            try:
                announce.set(svc.address, False)
            except Exception as err:
                log.error("removing %s failed: %s", svc.address, err)
    finally:
        announce.close()
    return 0

def reachable(ipr: IPRoute, addr: IPv6Address) -> bool:
    """A route to `addr` other than an unreachable one, or `addr` local."""
    try:
        routes = ipr.route("get", dst=str(addr))
    except Exception:
        return False
    return any(r["type"] in (1, 2) for r in routes)  # RTN_UNICAST, RTN_LOCAL

def wait(args: argparse.Namespace, site: Site) -> int:
    if len(args.service) != 1 or args.service[0] not in site.anycast:
        log.error("wait takes one --service NAME of the site's anycast services (%s)",
                  ", ".join(sorted(site.anycast)))
        return 2
    addr = site.anycast[args.service[0]]
    deadline = time.monotonic() + args.timeout
    netlink = NetlinkWatch()
    with IPRoute() as ipr:
        while not reachable(ipr, addr):
            left = deadline - time.monotonic()
            if left <= 0:
                # The first control-plane node runs the apiserver through the very
                # kubelet that waits here: go on, the kubelet keeps retrying.
                log.warning("%s (%s) not reachable after %.0f s; going on without it",
                            args.service[0], addr, args.timeout)
                return 0
            netlink.wait(min(left, 1.0))
    log.info("%s (%s) is reachable", args.service[0], addr)
    return 0

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m firstboot.anycast", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["serve", "wait"])
    p.add_argument("--site", type=Path, default=Path("/etc/kubermesh/site.toml"))
    p.add_argument("--service", action="append", default=[],
                   help="serve: NAME=URL (http://, https://, tcp://); wait: NAME")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between probes (≤ 1)")
    p.add_argument("--timeout", type=float, default=None,
                   help="serve: probe timeout (default 0.5 s); wait: seconds (default 300)")
    p.add_argument("--rise", type=int, default=3)
    p.add_argument("--fall", type=int, default=3)
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.interval <= 1:
        p.error("--interval must be more than 0 and at most 1 second")
    if args.rise < 1 or args.fall < 1:
        p.error("--rise and --fall must be at least 1")
    if args.timeout is None:
        args.timeout = 0.5 if args.command == "serve" else 300.0
    return args

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("anycast", args.debug)
    try:
        site = load_site(args.site)
    except SiteError as e:
        log.error("%s", e)
        return 1
    return serve(args, site) if args.command == "serve" else wait(args, site)

if __name__ == "__main__":
    sys.exit(main())
