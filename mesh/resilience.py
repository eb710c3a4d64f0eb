"""How well the mesh survives losing PCs: its single points of failure, random
loss simulated, and the few cables that would help most (pure; igraph).

The input is the mesh as OSPFv3 sees it (firstboot.ospf: the routers the SPF
tree reaches, the cables both ends' Router-LSAs list). Loss is simulated by
removing a random fraction of the nodes, `samples` times with a fixed seed, and
measuring the share of the survivors that are still in one piece (the largest
connected component). A cable is judged by the same samples: adding it joins two
survivors' pieces where both of its ends survive, so each candidate costs one
look per sample, and the greedy choice of several cables stays fast at 400 nodes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import igraph

from mesh.topology import pieces

FRACTIONS = (0.10, 0.20, 1 / 3)
TARGET = 1 / 3  # the loss the suggested cables are chosen for
CANDIDATE_NODES = 60  # the weakest nodes whose pairs are tried as new cables


@dataclass(frozen=True)
class Mesh:
    nodes: tuple[str, ...]
    cables: tuple[tuple[str, str], ...]
    names: Mapping[str, str] = field(default_factory=dict)  # node -> hostname


def mesh_of(me: str, reachable: Iterable[str], links: Iterable[tuple[str, str]],
            names: Mapping[str, str] | None = None) -> Mesh:
    """The live mesh: this node, the routers it reaches, the cables among them."""
    alive = {me, *reachable}
    cables = tuple(sorted((a, b) for a, b in links if a in alive and b in alive))
    return Mesh(tuple(sorted(alive)), cables, dict(names or {}))


def _pieces(nodes: list[str], cables: Iterable[tuple[str, str]], gone: frozenset[str]
            ) -> dict[str, str]:
    """Each survivor -> its piece's root."""
    return pieces((n for n in nodes if n not in gone), cables)


@dataclass
class _Sample:
    gone: frozenset[str]
    piece: dict[str, str]
    size: dict[str, int]

    @classmethod
    def of(cls, nodes: list[str], cables: Iterable[tuple[str, str]],
           gone: frozenset[str]) -> _Sample:
        piece = _pieces(nodes, cables, gone)
        size: dict[str, int] = {}
        for r in piece.values():
            size[r] = size.get(r, 0) + 1
        return cls(gone, piece, size)

    def survival(self, extra: tuple[str, str] | None = None) -> float:
        """Share of the survivors in the largest piece (with one more cable, if given)."""
        if not self.piece:
            return 0.0
        best = max(self.size.values())
        if extra is not None:
            a, b = extra
            ra, rb = self.piece.get(a), self.piece.get(b)
            if ra is not None and rb is not None and ra != rb:
                best = max(best, self.size[ra] + self.size[rb])
        return best / len(self.piece)


def _samples(nodes: list[str], cables: list[tuple[str, str]], fraction: float,
             samples: int, seed: int) -> list[_Sample]:
    rng = random.Random(f"{seed}:{fraction}")
    lose = round(len(nodes) * fraction)
    return [_Sample.of(nodes, cables, frozenset(rng.sample(nodes, lose)))
            for _ in range(samples)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def report(mesh: Mesh, samples: int = 200, seed: int = 1, suggest: int = 3) -> dict[str, Any]:
    """Everything `kubermesh mesh report` says, as data (its --json)."""
    cables = sorted({(a, b) if a < b else (b, a) for a, b in mesh.cables if a != b})
    nodes = sorted({*mesh.nodes, *(n for c in cables for n in c)})
    index = {n: i for i, n in enumerate(nodes)}
    g = igraph.Graph(n=len(nodes), edges=[(index[a], index[b]) for a, b in cables])
    degrees = dict(zip(nodes, g.degree(), strict=True))
    cut_nodes = sorted(nodes[i] for i in g.articulation_points())
    cut_cables = sorted(cables[e] for e in g.bridges())
    sims = {f: _samples(nodes, cables, f, samples, seed) for f in FRACTIONS} if nodes else {}
    survival = {f"{f:.3f}": _mean([s.survival() for s in ss]) for f, ss in sims.items()}
    return {
        "nodes": len(nodes), "cables": len(cables),
        "pieces": len(g.connected_components()) if nodes else 0,
        "degrees": {n: degrees[n] for n in nodes},
        "degree_histogram": {str(d): c for d, c in sorted(Counter(degrees.values()).items())},
        "articulation_points": cut_nodes,
        "bridges": [list(c) for c in cut_cables],
        "loss_fractions": [round(f, 3) for f in FRACTIONS],
        "survival": survival,
        "samples": samples, "seed": seed,
        "suggested_cables": _suggest(degrees, cables, sims.get(TARGET, []), cut_nodes,
                                     suggest),
        "names": {n: mesh.names[n] for n in nodes if n in mesh.names},
    }


def _suggest(degrees: dict[str, int], cables: list[tuple[str, str]], sims: list[_Sample],
             cut_nodes: list[str], k: int) -> list[dict[str, Any]]:
    """Greedy: the cable whose addition raises ⅓-loss survival most, k times."""
    nodes = sorted(degrees)
    if len(nodes) < 3 or not sims:
        return []
    neighbours: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in cables:
        neighbours[a].append(b)
        neighbours[b].append(a)
    # Where a cable can help: ends of single points of failure first, then the
    # nodes with the fewest cables.
    weak = [n for n in cut_nodes for n in neighbours[n]] + sorted(nodes, key=degrees.__getitem__)
    pool = list(dict.fromkeys(weak))[:CANDIDATE_NODES]
    present = set(cables)
    out: list[dict[str, Any]] = []
    current = list(cables)
    before = _mean([s.survival() for s in sims])
    for _ in range(k):
        best: tuple[float, tuple[str, str]] | None = None
        for i, a in enumerate(pool):
            for b in pool[i + 1:]:
                c = (a, b) if a < b else (b, a)
                if c in present:
                    continue
                score = _mean([s.survival(c) for s in sims])
                if best is None or score > best[0] + 1e-12:
                    best = (score, c)
        if best is None or best[0] <= before + 1e-9:
            break
        score, c = best
        out.append({"cable": list(c), "survival_before": before, "survival_after": score})
        present.add(c)
        current.append(c)
        sims = [_Sample.of(nodes, current, s.gone) for s in sims]
        before = score
    return out


def words(r: dict[str, Any]) -> str:
    """The report in plain words."""
    names: dict[str, str] = r["names"]

    def name(n: str) -> str:
        return names.get(n, n)

    hist = ", ".join(f"{c} with {d}" for d, c in r["degree_histogram"].items())
    lines = [f"mesh: {r['nodes']} nodes, {r['cables']} cables"
             + (f", in {r['pieces']} pieces" if r["pieces"] > 1 else "")
             + f"; cables per node: {hist}"]
    cut = r["articulation_points"]
    if cut:
        lines.append(f"single points of failure: {len(cut)} nodes whose loss cuts the mesh: "
                     + ", ".join(name(n) for n in cut[:12]) + (" …" if len(cut) > 12 else ""))
    bridges = r["bridges"]
    if bridges:
        lines.append(f"  and {len(bridges)} cables whose loss cuts it: "
                     + ", ".join(f"{name(a)} - {name(b)}" for a, b in bridges[:8])
                     + (" …" if len(bridges) > 8 else ""))
    if not cut and not bridges:
        lines.append("no single point of failure: no one node or cable cuts the mesh")
    for f in r["loss_fractions"]:
        share = r["survival"][f"{f:.3f}"]
        what = "a third" if abs(f - 1 / 3) < 0.01 else f"{f:.0%}"
        lines.append(f"losing {what} of the nodes at random: {share:.0%} of the survivors stay "
                     f"in one piece (mean of {r['samples']} trials)")
    for s in r["suggested_cables"]:
        a, b = s["cable"]
        lines.append(f"add a cable between {name(a)} and {name(b)}: ⅓-loss survival "
                     f"{s['survival_before']:.0%} → {s['survival_after']:.0%}")
    if not r["suggested_cables"] and r["nodes"] >= 3:
        lines.append("no single added cable raises ⅓-loss survival")
    return "\n".join(lines)
