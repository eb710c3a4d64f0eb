"""A client of the apiserver's anycast address, run inside a lab node by bench.apiserver.

    python -m bench.apiserver_probe ADDRESS PORT CA_FILE SECONDS

Asks `GET /readyz` (ready only while the apiserver reaches an etcd with a leader)
every 20 ms for SECONDS, each request on a new TLS connection verified against
the site's CA (the anycast address among its SANs), with a 300 ms timeout, and
prints one JSON list of [wall-clock time the request was sent, time its answer
came, the answering apiserver's DNS names or null when not ready].
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import time
from typing import Any

INTERVAL = 0.02
TIMEOUT = 0.3


def ask(ctx: ssl.SSLContext, host: str, port: int) -> list[str] | None:
    conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=ctx)
    try:
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        sans: Any = (conn.sock.getpeercert() or {}).get("subjectAltName", ())
        conn.request("GET", "/readyz")
        resp = conn.getresponse()
        if resp.status != 200 or resp.read().strip() != b"ok":
            return None
        return sorted(str(v) for k, v in sans if k == "DNS")
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def main() -> None:
    host, port, ca, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    ctx = ssl.create_default_context(cafile=ca)  # and the address among its IP SANs
    samples: list[tuple[float, float, list[str] | None]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.time()
        names = ask(ctx, host, port)
        samples.append((t, time.time(), names))
        time.sleep(max(0.0, INTERVAL - (time.time() - t)))
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
