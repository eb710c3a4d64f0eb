"""Overlay failover: IPv4 (overlay) and IPv6 (underlay) ping streams side by side
through a transit node that dies silently; how long each is lost.

    python -m bench.overlay_failover [--topology random:20:4] [--trials 10]

Like bench.failover, with the overlay agent in every node: each trial picks a
pair whose current path crosses a single transit node, streams pings at 100 Hz
from the source to the destination's IPv6 loopback and, at the same time, to
its IPv4 /32 (routed via inet6 by the overlay), kills the transit node, and
measures the longest gap of each stream. The difference is what the overlay
agent adds: the time from the kernel's new IPv6 route to the matching IPv4 one.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import time

from bench.common import lab, save, summary
from bench.failover import INTERVAL, KILL_AT, STREAM, outage, pick_trial
from lab.netns import Lab
from lab.stack import kernel_routes, node_address
from mesh.topology import parse


def stream(the_lab: Lab, src: int, target: str, family: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", the_lab.node(src).namespace, "ping", f"-{family}", "-n", "-D",
         "-i", str(INTERVAL), "-w", str(STREAM), "-W", "1", target],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trial(the_lab: Lab, src: int, dst: int, victim: int) -> tuple[float, float]:
    v4_target = node_address(the_lab, dst)
    assert v4_target is not None
    pings = [stream(the_lab, src, the_lab.node(dst).loopback, "6"),
             stream(the_lab, src, str(v4_target), "4")]
    try:
        time.sleep(KILL_AT)
        the_lab.kill(victim)
        outs = [p.communicate(timeout=STREAM + 10)[0] for p in pings]
    finally:
        for p in pings:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outage(outs[0]), outage(outs[1])


def overlay_ready(the_lab: Lab) -> bool:
    live = [n.index for n in the_lab.state.nodes if n.index not in the_lab.state.dead]
    return all(len(kernel_routes(the_lab, n, "4", proto="77")) == len(live) - 1 for n in live)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="random:20:4")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    v6: list[float] = []
    v4: list[float] = []
    with lab() as the_lab:
        the_lab.up(parse(args.topology))  # a fresh site; the node runtime in every node
        the_lab.wait_converged(120)
        for i in range(args.trials):
            deadline = time.monotonic() + 60
            while not overlay_ready(the_lab):
                if time.monotonic() > deadline:
                    raise RuntimeError("the overlay did not route every block in 60 s")
                time.sleep(0.3)
            src, dst, victim = pick_trial(the_lab, rng)
            lost6, lost4 = trial(the_lab, src, dst, victim)
            v6.append(lost6)
            v4.append(lost4)
            print(f"trial {i + 1:2}: n{src} -> n{dst}, killed n{victim}: IPv6 lost "
                  f"{lost6:.3f} s, IPv4 (overlay) lost {lost4:.3f} s", flush=True)
            the_lab.revive(victim)
            the_lab.wait_converged(60)
            time.sleep(1)
    result = {"topology": args.topology, "trials": args.trials, "ipv6_loss_s": v6,
              "ipv4_loss_s": v4, "ipv6": summary(v6), "ipv4": summary(v4),
              "overlay_added_s": summary([a - b for a, b in zip(v4, v6, strict=True)])}
    print(json.dumps({k: result[k] for k in ("ipv6", "ipv4", "overlay_added_s")}))
    save("overlay_failover", result)


if __name__ == "__main__":
    main()
