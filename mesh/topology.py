"""Topologies as data: who is cabled to whom. Nodes are numbered 1..N."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

Edge = tuple[int, int]
T = TypeVar("T")
MAX_NODES = 1000


@dataclass(frozen=True)
class Topology:
    spec: str
    nodes: int
    edges: tuple[Edge, ...]  # (a, b) with a < b, sorted

    def neighbours(self, n: int) -> list[int]:
        return sorted({b for a, b in self.edges if a == n} | {a for a, b in self.edges if b == n})

    def degree(self, n: int) -> int:
        return len(self.neighbours(n))

    def without(self, dead: Iterable[int] = (), cut: Iterable[Edge] = ()) -> Topology:
        gone = set(dead)
        cuts = {_edge(a, b) for a, b in cut}
        edges = tuple(e for e in self.edges if e not in cuts and not gone & set(e))
        return Topology(self.spec, self.nodes, edges)

    def distances(self, src: int) -> dict[int, int]:
        """Hop counts from src to every node it can reach (BFS)."""
        adj: dict[int, list[int]] = {n: [] for n in range(1, self.nodes + 1)}
        for a, b in self.edges:
            adj[a].append(b)
            adj[b].append(a)
        dist = {src: 0}
        queue = deque([src])
        while queue:
            n = queue.popleft()
            for m in adj[n]:
                if m not in dist:
                    dist[m] = dist[n] + 1
                    queue.append(m)
        return dist

    def connected(self) -> bool:
        return len(self.distances(1)) == self.nodes


def _edge(a: int, b: int) -> Edge:
    return (a, b) if a < b else (b, a)


def parse(spec: str) -> Topology:
    """`line:N`, `ring:N`, `grid:RxC`, `random:N:K[:SEED]` or `floor:RxC[:K][:SEED]`;
    ValueError says what is wrong."""
    kind, _, rest = spec.partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind == "line" and len(args) == 1:
            n = _count(args[0], 2)
            edges = [(i, i + 1) for i in range(1, n)]
        elif kind == "ring" and len(args) == 1:
            n = _count(args[0], 3)
            edges = [(i, i + 1) for i in range(1, n)] + [(1, n)]
        elif kind == "grid" and len(args) == 1 and "x" in args[0]:
            r_s, c_s = args[0].split("x", 1)
            rows, cols = _count(r_s, 1), _count(c_s, 1)
            n = rows * cols
            if n < 2:
                raise ValueError("a grid needs at least 2 nodes")
            edges = [(r * cols + c + 1, r * cols + c + 2)
                     for r in range(rows) for c in range(cols - 1)]
            edges += [(r * cols + c + 1, (r + 1) * cols + c + 1)
                      for r in range(rows - 1) for c in range(cols)]
        elif kind == "random" and len(args) in (2, 3):
            n = _count(args[0], 2)
            k = _count(args[1], 2)
            seed = int(args[2]) if len(args) == 3 else 1
            edges = _random_mesh(n, k, seed)
        elif kind == "floor" and 1 <= len(args) <= 3 and "x" in args[0]:
            r_s, c_s = args[0].split("x", 1)
            rows, cols = _count(r_s, 1), _count(c_s, 1)
            n = rows * cols
            if n < 2:
                raise ValueError("a floor needs at least 2 PCs")
            if n > MAX_NODES:  # before laying it out (all pairs: quadratic)
                raise ValueError(f"{n} nodes is more than the lab's {MAX_NODES}")
            k = _count(args[1], 3) if len(args) > 1 else 4  # 2 ports: a line, not a floor
            seed = int(args[2]) if len(args) == 3 else 1
            edges = _floor(rows, cols, k, seed)
        else:
            raise ValueError("expected line:N, ring:N, grid:RxC, random:N:K[:SEED] or "
                             "floor:RxC[:K][:SEED]")
    except ValueError as e:
        raise ValueError(f"topology {spec!r}: {e}") from None
    if n > MAX_NODES:
        raise ValueError(f"topology {spec!r}: {n} nodes is more than the lab's {MAX_NODES}")
    return Topology(spec, n, tuple(sorted(_edge(a, b) for a, b in edges)))


def _count(s: str, least: int) -> int:
    if not s.isdigit() or int(s) < least:
        raise ValueError(f"{s!r} is not a whole number >= {least}")
    return int(s)


def _random_mesh(n: int, k: int, seed: int) -> list[Edge]:
    """A connected graph in which every node has degree <= k.

    A random tree first (each node cabled to an earlier one with a free port),
    then random extra cables between nodes with free ports, about as a
    warehouse's PCs would be cabled to a few neighbours each.
    """
    rng = random.Random(seed)
    degree = dict.fromkeys(range(1, n + 1), 0)
    edges: set[Edge] = set()
    order = list(range(1, n + 1))
    rng.shuffle(order)
    for i, node in enumerate(order[1:], start=1):
        free = [m for m in order[:i] if degree[m] < k]  # never empty: a tree has leaves
        peer = rng.choice(free)
        edges.add(_edge(node, peer))
        degree[node] += 1
        degree[peer] += 1
    wanted = (n * k) // 2 * 3 // 4  # leave some ports free, as in real cabling
    for _ in range(n * k * 4):
        if len(edges) >= wanted:
            break
        a, b = rng.sample(range(1, n + 1), 2)
        e = _edge(a, b)
        if e not in edges and degree[a] < k and degree[b] < k:
            edges.add(e)
            degree[a] += 1
            degree[b] += 1
    return list(edges)


def _floor(rows: int, cols: int, k: int, seed: int) -> list[Edge]:
    """PCs scattered over a warehouse floor, cabled the way a floor is: each to its
    nearest neighbours (shortest cables first, degree <= k - 1: one port kept
    free), the pieces this leaves joined by their shortest cable, and a few
    long cable runs (one per 25 PCs) between far-apart PCs with a free port.

    PC r*cols + c + 1 stands near row r, column c: its own cell, jittered.
    """
    rng = random.Random(seed)
    n = rows * cols
    pos = {r * cols + c + 1: (r + rng.uniform(-0.35, 0.35), c + rng.uniform(-0.35, 0.35))
           for r in range(rows) for c in range(cols)}

    def dist(a: int, b: int) -> float:
        return math.dist(pos[a], pos[b])

    degree = dict.fromkeys(pos, 0)
    edges: set[Edge] = set()

    def cable(a: int, b: int) -> None:
        edges.add(_edge(a, b))
        degree[a] += 1
        degree[b] += 1

    near = k - 1
    pairs = sorted((dist(a, b), a, b) for a in pos for b in pos
                   if a < b and abs(pos[a][0] - pos[b][0]) < 2.5
                   and abs(pos[a][1] - pos[b][1]) < 2.5)
    for _, a, b in pairs:
        if degree[a] < near and degree[b] < near:
            cable(a, b)
    # Join the pieces, shortest cable first (a PC may use its spare port for it).
    component = _components(n, edges)
    while len(set(component.values())) > 1:
        _, a, b = min((dist(a, b), a, b) for a in pos for b in pos
                      if component[a] != component[b] and degree[a] < k and degree[b] < k)
        cable(a, b)
        component = _components(n, edges)
    # Long cable runs across the floor.
    far = [(a, b) for a in pos for b in pos
           if a < b and dist(a, b) > max(3.0, (rows + cols) / 4)]
    rng.shuffle(far)
    runs = math.ceil(n / 25)
    for a, b in far:
        if runs == 0:
            break
        if degree[a] < k and degree[b] < k and _edge(a, b) not in edges:
            cable(a, b)
            runs -= 1
    return list(edges)


def pieces(nodes: Iterable[T], edges: Iterable[tuple[T, T]]) -> dict[T, T]:
    """Each node -> one root per connected piece (union-find); edges touching a
    node not in `nodes` are left out."""
    parent = {x: x for x in nodes}

    def root(x: T) -> T:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        if a in parent and b in parent:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[ra] = rb
    return {x: root(x) for x in parent}


def _components(n: int, edges: set[Edge]) -> dict[int, int]:
    return pieces(range(1, n + 1), edges)
