"""Control-plane slots: how long a lab takes to elect them, and to hand a dead
holder's slot on.

    python -m bench.slots [--topology grid:4x5] [--trials 5] [--grace 10]

The node runtime runs in every node. The election is timed from the runtimes'
start until every node agrees on the holders (the lowest router-ids). Each trial
kills a random holder silently and times until every survivor shows its slot
vacated, then until every survivor agrees on its heir (the grace included); the
old holder is revived and must leave the heir in place.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

from bench.common import lab, save, site_file, summary
from lab.netns import Lab
from lab.stack import lowest_router_ids, slot_views, slots_differ
from mesh.topology import parse


def until(problems: Callable[[], list[str]], timeout: float) -> float:
    start = time.monotonic()
    while problems():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"not after {timeout} s: {problems()[:4]}")
        time.sleep(0.1)
    return time.monotonic() - start


def trial(the_lab: Lab, held: dict[int, int], rng: random.Random, grace: int
          ) -> tuple[float, float, dict[int, int]]:
    slot = rng.choice(sorted(held))
    victim = held[slot]
    others = [n.index for n in the_lab.state.nodes if n.index not in held.values()]
    heir = lowest_router_ids(the_lab, others, 1)[0]
    the_lab.kill(victim)
    killed = time.monotonic()
    until(lambda: [f"n{i}" for i, v in slot_views(the_lab).items()
                   if str(slot) not in v.get("vacated", {})], 30)
    vacated = time.monotonic() - killed
    after = {**held, slot: heir}
    until(lambda: slots_differ(the_lab, after), grace + 60)
    taken = time.monotonic() - killed
    the_lab.revive(victim)
    until(lambda: slots_differ(the_lab, after) + (
        [] if slot_views(the_lab).get(victim) else ["no status"]), 60)
    return vacated, taken, after


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--topology", default="grid:4x5",
                   help="2-connected, so that a dead holder cuts no one off (default grid:4x5)")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--grace", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    site = site_file(grace=args.grace)
    rng = random.Random(args.seed)
    with lab() as the_lab:
        start = time.monotonic()
        the_lab.up(parse(args.topology), site_file=site, agent=True)
        first = lowest_router_ids(the_lab, [n.index for n in the_lab.state.nodes], 3)
        held = dict(enumerate(first))
        elected = until(lambda: slots_differ(the_lab, held), 180) + 0.0
        total = time.monotonic() - start
        vacated, taken = [], []
        for _ in range(args.trials):
            v, t, held = trial(the_lab, held, rng, args.grace)
            vacated.append(v)
            taken.append(t)
    result = {"topology": args.topology, "grace_s": args.grace, "trials": args.trials,
              "setup_and_election_s": round(total, 1),
              "election_after_setup_s": round(elected, 1),
              "vacated_seen_by_all_s": summary(vacated),
              "taken_over_agreed_by_all_s": summary(taken)}
    save("slots", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
