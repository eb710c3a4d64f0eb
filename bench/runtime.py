"""The node side's own cost: CPU and memory of what a node runs besides FRR.

    python -m bench.runtime [--topology random:20:4] [--idle 30] [--storm 20]

On a converged lab with the node runtime in every node, every process in a
node's namespace that is not an FRR daemon (or etcd) is measured from /proc:
CPU seconds over a window (utime + stime, as a share of one core) and resident
memory. Two windows: idle, and a failover storm (a third of the nodes killed at
once, revived halfway through; only the survivors are counted).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import lab, save
from lab.netns import Lab
from mesh.topology import parse

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NOT_NODE_SIDE = ("zebra", "ospf6d", "bfdd", "etcd", "watchfrr")


def node_side(the_lab: Lab, index: int) -> list[int]:
    """PIDs of the node's own programs (the runtime; before it, the agents)."""
    n = the_lab.node(index)
    pids = []
    for pid in the_lab._pids(n.namespace):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm not in NOT_NODE_SIDE:
            pids.append(pid)
    return pids


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def rss_mib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except OSError:
        return 0.0


def window(the_lab: Lab, nodes: list[int], seconds: float,
           during: list[tuple[float, Callable[[], None]]] | None = None) -> dict[str, float]:
    """Per node: CPU share of one core over `seconds`, and peak RSS (MiB)."""
    pids = {n: node_side(the_lab, n) for n in nodes}
    start = {n: sum(cpu_seconds(p) for p in ps) for n, ps in pids.items()}
    peak = dict.fromkeys(nodes, 0.0)
    t0 = time.monotonic()
    actions = sorted(during or [], key=lambda a: a[0])
    while (elapsed := time.monotonic() - t0) < seconds:
        while actions and actions[0][0] <= elapsed:
            _, act = actions.pop(0)
            act()
        for n, ps in pids.items():
            peak[n] = max(peak[n], sum(rss_mib(p) for p in ps))
        time.sleep(0.5)
    took = time.monotonic() - t0
    cpu = {n: (sum(cpu_seconds(p) for p in ps) - start[n]) / took for n, ps in pids.items()}
    return {"cpu_percent_mean": 100 * statistics.mean(cpu.values()),
            "cpu_percent_max": 100 * max(cpu.values()),
            "rss_mib_mean": statistics.mean(peak.values()),
            "rss_mib_max": max(peak.values()),
            "processes_per_node": statistics.mean(len(ps) for ps in pids.values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--topology", default="random:20:4")
    p.add_argument("--idle", type=float, default=30.0, help="seconds of the idle window")
    p.add_argument("--storm", type=float, default=20.0, help="seconds of the storm window")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    with lab() as the_lab:
        topo = parse(args.topology)
        the_lab.up(topo)
        the_lab.wait_converged(120)
        time.sleep(15)  # blocks chosen, statuses written: the node side at rest
        nodes = list(range(1, topo.nodes + 1))
        idle = window(the_lab, nodes, args.idle)
        print("idle", json.dumps(idle), flush=True)
        victims = rng.sample(nodes, topo.nodes // 3)
        survivors = [n for n in nodes if n not in victims]

        def kill() -> None:
            for v in victims:
                the_lab.kill(v)

        def revive() -> None:
            for v in victims:
                the_lab.revive(v)

        storm = window(the_lab, survivors, args.storm,
                       during=[(0.0, kill), (args.storm / 2, revive)])
        print("storm", json.dumps(storm), flush=True)
    result = {"topology": args.topology, "idle": idle, "storm": storm,
              "killed": len(victims), "idle_s": args.idle, "storm_s": args.storm}
    save("runtime", result)


if __name__ == "__main__":
    main()
