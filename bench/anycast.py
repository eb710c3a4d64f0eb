"""Anycast failover: how long a client of etcd's anycast address goes unanswered
when its nearest instance dies, by service death and by node death.

    python -m bench.anycast [--topology random:30:4] [--trials 5]

etcd runs on three nodes far apart, each with the anycast agent (probe every
0.2 s, fall after 3 failures). A client node whose nearest instance is unique
asks the anycast address every 10 ms (bench.anycast_probe). Each trial kills,
1.5 s into the stream, either that etcd (SIGKILL: the service dies, the node
lives) or the whole node (Lab.kill: every process SIGKILLed, forwarding off),
and measures from the kill to the first answer from the next nearest instance
(target <= 2 s). The instance or node is then restarted and the client is back
on it before the next trial.
"""

from __future__ import annotations

import argparse
import json
import signal
import time

from bench.common import lab, probe_while, save, summary
from lab.netns import Lab
from lab.stack import (
    etcd_answering,
    etcd_anycast_url,
    etcd_members,
    pick_client,
    spread,
)
from mesh.topology import parse

STREAM = 6.0
KILL_AT = 1.5


def wait_answered_by(the_lab: Lab, client: int, member: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while etcd_answering(the_lab, client) != member:
        if time.monotonic() > deadline:
            raise RuntimeError(f"n{client} not answered by member {member:x} in {timeout} s")
        time.sleep(0.3)


def trial(the_lab: Lab, client: int, nearest: int, kind: str,
          ids: dict[int, int]) -> tuple[float, float]:
    """(kill to first answer from another member, last answer from the dead one to it)."""
    def kill() -> None:
        if kind == "service":
            the_lab.stop_agent(nearest, "etcd", sig=signal.SIGKILL)
        else:
            the_lab.kill(nearest)

    killed_at, out = probe_while(the_lab, client, "bench.anycast_probe",
                                 [etcd_anycast_url(the_lab), str(STREAM)], STREAM, KILL_AT, kill)
    samples = [(t, None if m is None else ids.get(m)) for t, m in json.loads(out)]
    before = [t for t, n in samples if t < killed_at and n == nearest]
    moved = [t for t, n in samples if t >= killed_at and n not in (None, nearest)]
    if not before or not moved:
        raise RuntimeError(f"{kind} trial: answers before {len(before)}, after {len(moved)}")
    return moved[0] - killed_at, moved[0] - before[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="random:30:4")
    p.add_argument("--trials", type=int, default=5)
    args = p.parse_args()
    results: dict[str, list[float]] = {"service": [], "node": []}
    gaps: dict[str, list[float]] = {"service": [], "node": []}
    with lab() as the_lab:
        topo = parse(args.topology)
        members = spread(topo, 3)
        the_lab.up(topo, services={"etcd": members})  # etcd behind anycast, by the runtime
        the_lab.wait_converged(120)
        client, nearest, next_nearest = pick_client(topo, members)
        deadline = time.monotonic() + 60
        while any(etcd_answering(the_lab, m) is None for m in members):
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not answer on every member in 60 s")
            time.sleep(0.5)
        ids = {i: int(name.removeprefix("n")) for i, name in
               etcd_members(the_lab, members[0]).items()}
        member_of = {node: i for i, node in ids.items()}
        print(f"etcd on {', '.join(f'n{m}' for m in members)}; client n{client}, nearest "
              f"n{nearest}, next n{next_nearest}", flush=True)
        for i in range(args.trials):
            for kind in ("service", "node"):
                wait_answered_by(the_lab, client, member_of[nearest], 60)
                failover, gap = trial(the_lab, client, nearest, kind, ids)
                results[kind].append(failover)
                gaps[kind].append(gap)
                print(f"trial {i + 1} {kind:7} death: answered by another member "
                      f"{failover:.3f} s after the kill (gap {gap:.3f} s)", flush=True)
                if kind == "service":
                    the_lab.start_agent(nearest, "etcd")
                else:
                    the_lab.revive(nearest)
                    the_lab.wait_converged(60)
    result = {"topology": args.topology, "members": members, "client": client,
              "nearest": nearest, "next_nearest": next_nearest,
              "probe": {"interval_s": 0.2, "rise": 3, "fall": 3},
              **{f"{k}_death_s": v for k, v in results.items()},
              **{f"{k}_death_gap_s": v for k, v in gaps.items()},
              **{f"{k}_death": summary(v) for k, v in results.items()}}
    print(json.dumps({k: result[f"{k}_death"] for k in results}))
    save("anycast", result)


if __name__ == "__main__":
    main()
