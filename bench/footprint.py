"""Footprint: memory of the routing daemons (zebra, ospf6d, bfdd) per node.

    python -m bench.footprint [--topology random:25:4]

RSS counts shared library pages in full for every process; PSS shares them out
between the processes that map them, so PSS summed over a node is what a node
really costs when many run on one machine, and RSS is what one alone costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import lab, save, site_file
from mesh.frr import FRR_DAEMONS
from mesh.topology import parse


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--topology", default="random:25:4")
    args = p.parse_args()
    with lab() as the_lab:
        the_lab.up(parse(args.topology), site_file(), agent=False)  # FRR's own memory
        the_lab.wait_converged(300)
        per_daemon: dict[str, list[tuple[int, int]]] = {d: [] for d in FRR_DAEMONS}
        for node in the_lab.state.nodes:
            for daemon in FRR_DAEMONS:
                pid = the_lab._daemon_pid(node, daemon)
                assert pid is not None, f"{node.name}: no {daemon}"
                per_daemon[daemon].append(memory_kib(pid))
    result: dict[str, object] = {"topology": args.topology}
    for d, values in per_daemon.items():
        result[d] = {"rss_mib": statistics.mean(v[0] for v in values) / 1024,
                     "pss_mib": statistics.mean(v[1] for v in values) / 1024}
    result["node_rss_mib"] = sum(result[d]["rss_mib"] for d in FRR_DAEMONS)  # type: ignore[index]
    result["node_pss_mib"] = sum(result[d]["pss_mib"] for d in FRR_DAEMONS)  # type: ignore[index]
    print(json.dumps(result, indent=1))
    save("footprint", result)


if __name__ == "__main__":
    main()
