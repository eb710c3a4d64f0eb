"""The forklift: a third of the warehouse's PCs gone at once, and a storm of cables
cut and plugged, on labs of 100 to 400 nodes.

    python -m bench.forklift [--sizes 100,200,400] [--kinds random,floor]
                             [--fraction 0.333] [--pings 20] [--storm 0.1] [--seed 1]

For each size and topology (random:N:4, or floor:RxC for the nearest R x C): the
setup, the cold start until every node routes to every other (cold_routes_s) and
until, also, every cable has a Full adjacency (cold_convergence_s); then on the
converged lab: a random `fraction` of the nodes is killed at once (silent
death: daemons SIGKILLed, forwarding off, cables left up); the time until every
survivor routes exactly to the survivors it is still connected to, and to no
dead or cut-off node; the pieces the survivors form and the largest; pings
between random pairs in one piece. Then the storm: `storm` of the surviving
cables are pulled at once, the time until every node routes exactly what is
still connected, then all plugged back, and the time until it is whole again;
meanwhile every live node's routes are read over and over, and a route to a
node that stays reachable all along must never be missing (routes_lost_elsewhere).

The lab runs FRR alone by default (`--agent` for the node runtime too), so the
figures are the routing's; the lab raises the host limits it needs and says so.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import random
import time
from functools import partial
from ipaddress import IPv6Address

from bench.common import lab, save
from bench.convergence import all_routed
from lab.netns import Lab, describe_timers
from mesh.topology import Topology, parse


def spec_for(kind: str, n: int) -> str:
    if kind == "random":
        return f"random:{n}:4"
    rows = max(1, round(math.sqrt(n / 2)))
    return f"floor:{rows}x{max(2, round(n / rows))}"


def pieces(topo: Topology, alive: list[int]) -> list[list[int]]:
    left = set(alive)
    out = []
    while left:
        start = min(left)
        reach = [i for i in topo.distances(start) if i in left]
        out.append(sorted(reach))
        left -= set(reach)
    return sorted(out, key=len, reverse=True)


def forklift(the_lab: Lab, rng: random.Random, fraction: float, pings: int) -> dict[str, object]:
    st = the_lab.state
    nodes = [n.index for n in st.nodes]
    victims = rng.sample(nodes, round(len(nodes) * fraction))
    killed = time.monotonic()
    the_lab.kill_many(victims)  # every process SIGKILLed first, then forwarding off
    spread = time.monotonic() - killed
    took = the_lab.wait_converged(timeout=600)
    survivors = [i for i in nodes if i not in st.dead]
    parts = pieces(st.topology.without(st.dead, st.cut), survivors)
    pairs = []
    for _ in range(pings):
        part = rng.choice([p for p in parts if len(p) > 1] or [[]])
        if len(part) > 1:
            pairs.append(tuple(rng.sample(part, 2)))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answered = sum(pool.map(lambda p: the_lab.ping(p[0], p[1], count=2), pairs))
    return {"killed": len(victims), "kills_spread_s": round(spread, 2),
            "reconverged_s": round(took + spread, 1), "pieces": len(parts),
            "largest_piece": len(parts[0]) if parts else 0, "survivors": len(survivors),
            "pings_answered": f"{answered}/{len(pairs)}"}


def watch_routes(the_lab: Lab, keep: dict[int, set[IPv6Address]], timeout: float
                 ) -> tuple[set[tuple[int, IPv6Address]], int]:
    """Read every live node's kernel routes, over and over, until each routes to
    exactly what it should; return the routes in `keep` (node -> loopbacks it can
    reach all along) found missing in any reading, and how many readings."""
    st = the_lab.state
    live = list(keep)
    lost: set[tuple[int, IPv6Address]] = set()
    start, polls = time.monotonic(), 0
    while True:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = dict(zip(live, pool.map(lambda i: set(the_lab.routes(i)), live), strict=True))
        polls += 1
        for i in live:
            lost |= {(i, a) for a in keep[i] - got[i]}
        if all(got[i] == st.expected_routes(i) for i in live):
            return lost, polls
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"routes not exact {timeout:.0f} s after the storm")


def crossing(before: Topology, live: list[int], cut: list[tuple[int, int]]
             ) -> set[tuple[int, int]]:
    """The pairs (node, destination) with a shortest path over one of the cut cables:
    their routes must change. Every other route is "elsewhere"."""
    dist = {i: before.distances(i) for i in live}
    out = set()
    for i in live:
        for d, hops in dist[i].items():
            for u, v in cut:
                for a, b in ((u, v), (v, u)):
                    da, bd = dist[i].get(a), dist[d].get(b)
                    if da is not None and bd is not None and da + 1 + bd == hops:
                        out.add((i, d))
    return out


def storm(the_lab: Lab, rng: random.Random, share: float) -> dict[str, object]:
    """Cables cut at once, then plugged back at once. Every route to a node that
    stays reachable and whose shortest paths avoid the cut cables (elsewhere) must
    stay in place while they are cut, and every route while they are plugged back
    (checked in every reading of every node's routes, so a loss shorter than one
    reading can go unseen). A route that had to move may lack for a moment, until
    its node's next shortest-path run: those are counted apart."""
    st = the_lab.state
    alive = [e for e in st.topology.edges if not set(e) & set(st.dead)]
    cut = rng.sample(alive, max(1, round(len(alive) * share)))
    live = [n.index for n in st.nodes if n.index not in st.dead]
    during = st.topology.without(st.dead, [*st.cut, *cut])
    keep = {i: {IPv6Address(st.nodes[j - 1].loopback) for j in during.distances(i) if j != i}
            for i in live}
    index = {IPv6Address(n.loopback): n.index for n in st.nodes}
    moved = crossing(st.topology.without(st.dead, st.cut), live, cut)
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda e: the_lab.cut(*e), cut))
    lost, polls = watch_routes(the_lab, keep, timeout=600)
    the_lab.wait_converged(timeout=600)
    after_cut = time.monotonic() - start  # the cutting included
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        start = time.monotonic()
        list(pool.map(lambda e: the_lab.plug(*e), cut))
    lost_plugging, polls_plugging = watch_routes(the_lab, keep, timeout=600)
    the_lab.wait_converged(timeout=600)
    elsewhere = {(i, a) for i, a in lost if (i, index[a]) not in moved}
    return {"cables_cut": len(cut), "converged_after_cut_s": round(after_cut, 1),
            "whole_again_after_plug_s": round(time.monotonic() - start, 1),
            "routes_lost_elsewhere": len(elsewhere | lost_plugging),
            "routes_moved": len(moved),
            "moved_routes_missing_for_a_moment": len(lost - elsewhere),
            "route_readings": polls + polls_plugging}


def wait_routed(the_lab: Lab, timeout: float) -> float:
    """Seconds until every node has a route to every other node's loopback (FRR's
    vty is not asked: only the kernel's routes)."""
    start = time.monotonic()
    while not all_routed(the_lab):
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"no full routing after {timeout} s")
        time.sleep(0.5)
    return time.monotonic() - start


def say(start: float, message: str) -> None:
    print(f"  {time.monotonic() - start:6.1f} s  {message}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,200,400")
    p.add_argument("--kinds", default="random,floor")
    p.add_argument("--fraction", type=float, default=1 / 3)
    p.add_argument("--pings", type=int, default=20)
    p.add_argument("--storm", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--agent", action="store_true", help="the node runtime in every node too")
    args = p.parse_args()
    results = []
    for kind in args.kinds.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            spec = spec_for(kind, n)
            rng = random.Random(f"{args.seed}:{spec}")
            with lab() as the_lab:
                start = time.monotonic()
                # The lab's own site, with the timers it chooses for this size (it says).
                the_lab.up(parse(spec), agent=args.agent, progress=partial(say, start))
                setup = time.monotonic() - start
                routed = wait_routed(the_lab, timeout=900)  # every route everywhere
                say(start, f"every node routes to every other after {routed:.1f} s")
                cold = routed + the_lab.wait_converged(timeout=900, progress=partial(say, start))
                m = the_lab.site.mesh
                row: dict[str, object] = {"topology": spec, "nodes": the_lab.state.topology.nodes,
                                          "timers": describe_timers(vars(m)),
                                          "setup_s": round(setup, 1),
                                          "cold_routes_s": round(routed, 1),
                                          "cold_convergence_s": round(cold, 1)}
                row["forklift"] = forklift(the_lab, rng, args.fraction, args.pings)
                row["storm"] = storm(the_lab, rng, args.storm)
            print(json.dumps(row), flush=True)
            results.append(row)
    save("forklift", {"fraction": args.fraction, "agent": args.agent, "runs": results})


if __name__ == "__main__":
    main()
