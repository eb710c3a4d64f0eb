"""Failover: how long a 100 Hz ping stream is lost when a transit node dies silently.

    python -m bench.failover [--topology random:20:4] [--trials 20]

Each trial picks a pair whose current path crosses a transit node (the source's
single next hop), streams pings at 100 Hz, kills that node (daemons killed,
forwarding off, cables left up), and measures the longest gap between replies.
The node is revived and the mesh reconverged before the next trial.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import subprocess
import time
from ipaddress import IPv6Address

from bench.common import lab, save, site_file, summary
from lab.netns import Lab
from mesh.topology import parse

INTERVAL = 0.01
STREAM = 4  # seconds of pings per trial (ping -w takes whole seconds)
KILL_AT = 1.0


def only_next_hop(the_lab: Lab, src: int, dst: int) -> int | None:
    """The node src sends all its traffic for dst through, if there is one (no ECMP)."""
    hops = the_lab.routes(src).get(IPv6Address(the_lab.node(dst).loopback), [])
    return the_lab.node(src).links[hops[0][1]] if len(hops) == 1 else None


def pick_trial(the_lab: Lab, rng: random.Random) -> tuple[int, int, int]:
    topo = the_lab.state.topology
    for _ in range(1000):
        src, dst = rng.sample(range(1, topo.nodes + 1), 2)
        if topo.distances(src)[dst] < 2:
            continue
        victim = only_next_hop(the_lab, src, dst)
        if victim not in (None, dst) and dst in topo.without(dead=[victim]).distances(src):
            return src, dst, victim
    raise RuntimeError("no pair with a single-path transit node in this topology")


def outage(ping_output: str) -> float:
    """Longest gap between consecutive replies, less one interval."""
    stamps = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", ping_output, re.M)]
    if len(stamps) < 2:
        raise RuntimeError("ping stream got fewer than two replies")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return max(0.0, max(gaps) - INTERVAL)


def trial(the_lab: Lab, src: int, dst: int, victim: int) -> float | None:
    """Loss in seconds, or None when the path moved off the victim before the kill."""
    target = the_lab.node(dst).loopback
    ping = subprocess.Popen(
        ["ip", "netns", "exec", the_lab.node(src).namespace, "ping", "-6", "-n", "-D",
         "-i", str(INTERVAL), "-w", str(STREAM), "-W", "1", target],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(KILL_AT)
        if only_next_hop(the_lab, src, dst) != victim:
            return None
        the_lab.kill(victim)
        out, _ = ping.communicate(timeout=STREAM + 10)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    return outage(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--topology", default="random:20:4")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--bfd-interval-ms", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    losses: list[float] = []
    with lab() as the_lab:
        the_lab.up(parse(args.topology), site_file(args.bfd_interval_ms))
        the_lab.wait_converged(120)
        while len(losses) < args.trials:
            i = len(losses)
            src, dst, victim = pick_trial(the_lab, rng)
            loss = trial(the_lab, src, dst, victim)
            if loss is None:
                print(f"n{src} -> n{dst}: path moved off n{victim} before the kill; again")
                continue
            losses.append(loss)
            print(f"trial {i + 1:2}: n{src} -> n{dst}, killed n{victim}: lost {loss:.3f} s",
                  flush=True)
            the_lab.revive(victim)
            the_lab.wait_converged(60)
            time.sleep(1)  # let BFD sessions to the revived node settle
    result = {"topology": args.topology, "trials": args.trials,
              "bfd_interval_ms": args.bfd_interval_ms, "loss_s": losses, **summary(losses)}
    print(json.dumps({k: v for k, v in result.items() if k != "loss_s"}))
    save("failover", result)


if __name__ == "__main__":
    main()
