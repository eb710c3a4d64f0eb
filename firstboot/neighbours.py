"""Talking to other nodes' provisioning servers (mesh.provision.HTTP_PORT): a
newcomer's join request, and `kubermesh nodes` on a member, which asks every
node of the mesh for the join requests it holds and approves one."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
from dataclasses import dataclass
from typing import Any

from mesh import join
from mesh.provision import HTTP_PORT

TIMEOUT = 30.0


def request(host: str, method: str, path: str, body: Any = None, port: int = HTTP_PORT,
            timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """One HTTP exchange with a node's provisioning server (host may carry %zone)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class Held:
    holder: str  # the loopback of the node holding the request
    request: dict[str, Any]  # firstboot.provision.Request.summary()


def held_requests(nodes: list[str], port: int = HTTP_PORT, timeout: float = 5.0
                  ) -> tuple[list[Held], dict[str, str]]:
    """Every join request the given nodes hold, and the nodes that did not answer."""
    def ask(node: str) -> list[Held]:
        code, body = request(node, "GET", "/join", port=port, timeout=timeout)
        if code != 200:
            raise OSError(f"HTTP {code}")
        return [Held(node, r) for r in json.loads(body)]

    found: list[Held] = []
    silent: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = {pool.submit(ask, n): n for n in nodes}
        for f in concurrent.futures.as_completed(futures):
            try:
                found += f.result()
            except (OSError, ValueError) as e:
                silent[futures[f]] = str(e) or type(e).__name__
    return found, silent


def approve(holder: str, node_id: str, site_secret: str, port: int = HTTP_PORT) -> dict[str, Any]:
    code, body = request(holder, "POST", f"/join/{node_id}/approve",
                         {"mac": join.approval_mac(site_secret, node_id)}, port=port)
    answer: dict[str, Any] = json.loads(body or b"{}")
    if code != 200:
        raise OSError(f"{holder}: HTTP {code}: {answer.get('error', '')}")
    return answer
