"""Footprint: memory and CPU of the routing daemons (zebra, ospf6d, bfdd, and the
watchfrr that watches them) per node.

    python -m bench.footprint [--topology random:25:4] [--cpu-window 30]

RSS counts shared library pages in full for every process; PSS shares them out
between the processes that map them, so PSS summed over a node is what a node
really costs when many run on one machine, and RSS is what one alone costs.
CPU: user + system time of a node's daemons over `--cpu-window` seconds of a
converged, idle mesh (hellos, BFD, refreshes), as a share of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.common import lab, save
from lab.netns import describe_timers
from mesh.frr import FRR_DAEMONS
from mesh.topology import parse

DAEMONS = (*FRR_DAEMONS, "watchfrr")


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--topology", default="random:25:4")
    p.add_argument("--cpu-window", type=float, default=30.0)
    args = p.parse_args()
    with lab() as the_lab:
        # FRR's own cost, with the timers the lab chooses for this size (it says).
        the_lab.up(parse(args.topology), agent=False, progress=print)
        the_lab.wait_converged(300)
        per_daemon: dict[str, list[tuple[int, int]]] = {d: [] for d in DAEMONS}
        for node in the_lab.state.nodes:
            for daemon in DAEMONS:
                pid = the_lab._daemon_pid(node, daemon)
                assert pid is not None, f"{node.name}: no {daemon}"
                per_daemon[daemon].append(memory_kib(pid))
        pids = [pid for node in the_lab.state.nodes for d in DAEMONS
                if (pid := the_lab._daemon_pid(node, d)) is not None]
        before, start = sum(map(cpu_seconds, pids)), time.monotonic()
        time.sleep(args.cpu_window)
        used = sum(map(cpu_seconds, pids)) - before
        core_share = used / (time.monotonic() - start) / len(the_lab.state.nodes)
        load = os.getloadavg()[0]
        timers = describe_timers(vars(the_lab.site.mesh))
    result: dict[str, object] = {"topology": args.topology,
                                 "idle_cpu_per_node_percent_of_a_core": round(100 * core_share, 2),
                                 "loadavg_1m": load, "timers": timers}
    for d, values in per_daemon.items():
        result[d] = {"rss_mib": statistics.mean(v[0] for v in values) / 1024,
                     "pss_mib": statistics.mean(v[1] for v in values) / 1024}
    result["node_rss_mib"] = sum(result[d]["rss_mib"] for d in DAEMONS)  # type: ignore[index]
    result["node_pss_mib"] = sum(result[d]["pss_mib"] for d in DAEMONS)  # type: ignore[index]
    print(json.dumps(result, indent=1))
    save("footprint", result)


if __name__ == "__main__":
    main()
