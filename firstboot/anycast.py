"""Anycast: a service's /128 on lo while the local instance is healthy.

Each service this node runs (the credential kubermesh.anycast in the image, one
`name=probe-URL` per line; `--anycast` in the lab) is probed in a thread of its
own every INTERVAL (HTTP(S) GET answered 2xx, or a TCP connect for
tcp://host:port), so a hung probe of one delays no other. After RISE good probes
in a row its anycast address from the site goes on lo and ospf6d announces it;
after FALL bad ones it is removed, and the mesh routes its clients to the next
nearest healthy instance. On stop every address it manages is withdrawn: an
instance no longer watched must not attract clients.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from typing import TYPE_CHECKING, Any

from firstboot.runtime import Controller
from mesh.site import Site

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("kubermesh.anycast")

INTERVAL = 0.2  # seconds between probes
TIMEOUT = 0.5  # a probe's own timeout
RISE = FALL = 3


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
        # Here, not at the top: only nodes that run a service pay their import
        # (seconds on an emulated node, where the runtime's start is on the boot's path).
        import http.client

        try:
            if self.scheme == "tcp":
                socket.create_connection((self.host, self.port), timeout=timeout).close()
                return None
            conn: http.client.HTTPConnection
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                                   context=_liveness_context())
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


@functools.cache
def _liveness_context() -> ssl.SSLContext:
    """The local instance is probed for liveness, not identity (its certificate names
    the anycast address, not this loopback): no CA bundle to load, made once (loading
    one at every probe cost a slow node most of a CPU)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


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
    # Whether this node runs the service now (None: always); probed only while it does.
    runs: Callable[[], bool] | None = field(default=None, compare=False)


def parse_services(site: Site, specs: list[str]) -> list[Service]:
    services = []
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep:
            raise ValueError(f"{spec!r}: expected name=probe-URL")
        if name not in site.anycast:
            raise ValueError(f"{spec!r}: the site has no anycast address for {name!r} "
                             f"(it has {', '.join(sorted(site.anycast))})")
        services.append(Service(name, site.anycast[name], Probe.parse(url)))
    return services


class Anycast(Controller):
    """The anycast /128s on lo follow the services' health."""

    name = "anycast"
    period = 1.0  # also puts back an address removed by hand

    def __init__(self, services: list[Service], ipr: Any, post: Callable[[str], None],
                 interval: float = INTERVAL, rise: int = RISE, fall: int = FALL) -> None:
        self.services, self.ipr, self.post = services, ipr, post
        self.interval = interval
        self.lo = ipr.link_lookup(ifname="lo")[0]
        have = self._on_lo()
        # Start from what lo has: a restarted runtime does not withdraw a healthy service.
        self.health = {s.name: Hysteresis(rise, fall, healthy=s.address in have)
                       for s in services}
        self.last_error: dict[str, str | None] = {s.name: "" for s in services}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.announced: frozenset[IPv6Address] = frozenset()
        for svc in services:
            log.info("%s: probing %s every %.2f s (rise %d, fall %d); %s %s", svc.name,
                     svc.probe, interval, rise, fall, svc.address,
                     "announced" if self.health[svc.name].healthy else "withdrawn")
            threading.Thread(target=self._probe, args=(svc,), name=f"probe-{svc.name}",
                             daemon=True).start()

    def _probe(self, svc: Service) -> None:
        next_at = time.monotonic()
        while not self.stopping.is_set():
            # Not run on this node right now (a control plane on a node without a
            # slot): unhealthy, without a probe every interval.
            error = ("not run on this node" if svc.runs is not None and not svc.runs()
                     else svc.probe.check(TIMEOUT))
            with self.lock:
                h = self.health[svc.name]
                was = h.healthy
                now = h.update(error is None)
                if error != self.last_error[svc.name] and error is not None:
                    log.info("%s: probe failed: %s", svc.name, error)
                self.last_error[svc.name] = error
            if now != was:
                log.warning("%s: %s, %s %s", svc.name, "healthy" if now else "unhealthy",
                            "announcing" if now else "withdrawing", svc.address,
                            extra={"fields": {"service": svc.name, "healthy": str(now)}})
                self.post(self.name)
            next_at += self.interval
            self.stopping.wait(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - self.interval)  # no catching up

    def _on_lo(self) -> set[IPv6Address]:
        return {IPv6Address(a.get_attr("IFA_ADDRESS"))
                for a in self.ipr.get_addr(index=self.lo, family=socket.AF_INET6)
                if a["prefixlen"] == 128}

    def desired(self) -> frozenset[IPv6Address]:
        with self.lock:
            return frozenset(s.address for s in self.services if self.health[s.name].healthy)

    def states(self) -> dict[str, bool]:
        with self.lock:
            return {s.name: self.health[s.name].healthy for s in self.services}

    def reconcile(self) -> bool:
        self._apply(self.desired())
        return self._set_announced(self.desired())

    def _set_announced(self, now: frozenset[IPv6Address]) -> bool:
        changed = now != self.announced
        self.announced = now
        return changed

    def _apply(self, want: frozenset[IPv6Address]) -> None:
        have = self._on_lo()
        errors = []
        for svc in self.services:
            on = svc.address in want
            if (svc.address in have) == on:
                continue
            try:
                self.ipr.addr("add" if on else "del", index=self.lo, address=str(svc.address),
                              prefixlen=128)
            except Exception as e:
                errors.append(f"{'adding' if on else 'removing'} {svc.address}: {e}")
        if errors:
            raise RuntimeError("; ".join(errors))

    def close(self) -> None:
        self.stopping.set()
        if self.services:
            log.info("withdrawing %s", ", ".join(str(s.address) for s in self.services))
        self._apply(frozenset())
