"""A client of etcd's anycast address, run inside a lab node by bench.anycast.

    python -m bench.anycast_probe URL SECONDS

Asks `POST /v3/maintenance/status` (etcd's gRPC gateway: the answer names the
member) every 10 ms for SECONDS, each request on a new connection with a 200 ms
timeout, and prints one JSON list of [wall-clock time, member id or null].
"""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.parse

INTERVAL = 0.01
TIMEOUT = 0.2


def ask(host: str, port: int) -> int | None:
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request("POST", "/v3/maintenance/status", body="{}",
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        return int(json.loads(resp.read())["header"]["member_id"])
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        return None
    finally:
        conn.close()


def main() -> None:
    url = urllib.parse.urlsplit(sys.argv[1])
    seconds = float(sys.argv[2])
    assert url.hostname and url.port
    samples: list[tuple[float, int | None]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.time()
        samples.append((t, ask(url.hostname, url.port)))
        time.sleep(max(0.0, INTERVAL - (time.time() - t)))
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
