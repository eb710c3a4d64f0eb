"""Convergence: `lab up` until every node routes to every other node's loopback.

    python -m bench.convergence [--sizes 25,50,100] [--degree 4] [--bfd-interval-ms 100]

For each size, a random:N:K mesh is brought up from nothing. Reported per size:
  setup    namespaces, FRR started and configured on every node, then every cable
  routes   from the cables plugged until every node has a route to every other loopback
  full     from the cables plugged until, also, every cable has a Full adjacency
  cpu      load average over the last minute, to show how busy the machine was
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import time

from bench.common import lab, save, site_file
from lab.netns import Lab
from mesh.topology import parse


def all_routed(the_lab: Lab) -> bool:
    nodes = the_lab.state.nodes
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda n: len(the_lab.routes(n.index)), nodes))
    return all(c == len(nodes) - 1 for c in counts)


def one(size: int, degree: int, bfd_ms: int, timeout: float) -> dict[str, float]:
    with lab() as the_lab:
        start = time.monotonic()
        # FRR alone: what is measured is the routing protocol's convergence.
        the_lab.up(parse(f"random:{size}:{degree}"), site_file(bfd_ms), agent=False)
        started = time.monotonic()
        while not all_routed(the_lab):
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{size} nodes: no full routing after {timeout} s")
            time.sleep(0.2)
        routed = time.monotonic()
        the_lab.wait_converged(timeout)
        full = time.monotonic()
        return {"nodes": size, "setup_s": started - start, "routes_s": routed - started,
                "full_s": full - started, "loadavg_1m": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="25,50,100")
    p.add_argument("--degree", type=int, default=4)
    p.add_argument("--bfd-interval-ms", type=int, default=100)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        row = one(size, args.degree, args.bfd_interval_ms, args.timeout)
        rows.append(row)
        print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
    save(f"convergence-bfd{args.bfd_interval_ms}",
         {"degree": args.degree, "bfd_interval_ms": args.bfd_interval_ms, "rows": rows})


if __name__ == "__main__":
    main()
