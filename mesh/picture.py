"""A picture of the mesh for `kubermesh mesh report --svg` (and `lab report`):
nodes coloured by stage (the status light's colours, mesh.light), single points
of failure marked (articulation points ringed in red, bridges drawn red and
dashed), the suggested cables dotted green. The layout is igraph's
Fruchterman-Reingold (force-directed, in C; fast at 400 nodes), started from a
seeded random placement so that the same mesh gives the same picture.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from mesh import light
from mesh.resilience import Mesh

WIDTH, HEIGHT, MARGIN = 1000, 800, 40
LEGEND_WIDTH = 230
UNKNOWN = "#9e9e9e"  # a node whose stage this view does not know
LABELS_UP_TO = 80  # nodes; larger meshes carry names as tooltips only


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def layout(mesh: Mesh, seed: int = 1) -> dict[str, tuple[float, float]]:
    """Each node's place in [0, 1]², force-directed."""
    import igraph

    nodes = list(mesh.nodes)
    if not nodes:
        return {}
    if len(nodes) == 1:
        return {nodes[0]: (0.5, 0.5)}
    index = {n: i for i, n in enumerate(nodes)}
    g = igraph.Graph(n=len(nodes), edges=[(index[a], index[b]) for a, b in mesh.cables])
    rng = random.Random(seed)
    start = [[rng.uniform(-1, 1), rng.uniform(-1, 1)] for _ in nodes]
    # The algorithm draws random numbers too: from this seed, then igraph's default.
    igraph.set_random_number_generator(rng)
    try:
        coords = g.layout_fruchterman_reingold(seed=start, niter=500).coords
    finally:
        igraph.set_random_number_generator(random)
    xs, ys = [c[0] for c in coords], [c[1] for c in coords]
    w, h = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    return {n: ((x - min(xs)) / w, (y - min(ys)) / h)
            for n, (x, y) in zip(nodes, coords, strict=True)}


def svg(mesh: Mesh, report: dict[str, Any], stages: Mapping[str, str], title: str,
        seed: int = 1) -> str:
    """The picture as SVG text. `stages`: node -> stage name, where known."""
    places = layout(mesh, seed)
    area_w, area_h = WIDTH - LEGEND_WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN - 30

    def at(n: str) -> tuple[float, float]:
        x, y = places[n]
        return (LEGEND_WIDTH + MARGIN + x * area_w, MARGIN + 30 + y * area_h)

    names = report.get("names", {})
    cuts = set(report.get("articulation_points", ()))
    bridges = {tuple(sorted(b)) for b in report.get("bridges", ())}
    many = len(mesh.nodes) > LABELS_UP_TO
    radius = 4 if many else 7
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{MARGIN}" y="{MARGIN}" font-size="18">{escape(title)}</text>']
    for a, b in mesh.cables:
        (x1, y1), (x2, y2) = at(a), at(b)
        bridge = tuple(sorted((a, b))) in bridges
        style = ('stroke="#d50000" stroke-width="2.5" stroke-dasharray="6 3"' if bridge
                 else 'stroke="#607d8b" stroke-width="1"')
        out.append(f'<line class="{"bridge" if bridge else "cable"}" x1="{x1:.1f}" '
                   f'y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" {style}>'
                   f'<title>{escape(names.get(a, a))} - {escape(names.get(b, b))}'
                   f'{" (bridge: a single point of failure)" if bridge else ""}</title></line>')
    for s in report.get("suggested_cables", ()):
        a, b = s["cable"]
        if a in places and b in places:
            (x1, y1), (x2, y2) = at(a), at(b)
            out.append(f'<line class="suggested" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" '
                       f'y2="{y2:.1f}" stroke="#00c853" stroke-width="2" '
                       f'stroke-dasharray="2 4"><title>suggested cable</title></line>')
    for n in mesh.nodes:
        x, y = at(n)
        stage = stages.get(n, "")
        fill = _hex(light.STAGE_COLOURS[stage][1]) if stage in light.STAGE_COLOURS else UNKNOWN
        ring = 'stroke="#d50000" stroke-width="3"' if n in cuts else \
            'stroke="#263238" stroke-width="1"'
        name = names.get(n, n)
        tip = f"{name} ({n}), {stage or 'stage unknown here'}" + (
            ", articulation point: a single point of failure" if n in cuts else "")
        out.append(f'<circle class="{"cut node" if n in cuts else "node"}" '
                   f'data-stage="{escape(stage)}" cx="{x:.1f}" cy="{y:.1f}" r="{radius}" '
                   f'fill="{fill}" {ring}><title>{escape(tip)}</title></circle>')
        if not many:
            out.append(f'<text x="{x + radius + 2:.1f}" y="{y + 4:.1f}" font-size="10">'
                       f'{escape(name)}</text>')
    out += _legend(report, stages)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _legend(report: dict[str, Any], stages: Mapping[str, str]) -> list[str]:
    rows: list[tuple[str, str]] = [
        (_hex(rgb), f"{stage} ({name})") for stage, (name, rgb) in light.STAGE_COLOURS.items()]
    if sum(s in light.STAGE_COLOURS for s in stages.values()) < report.get("nodes", 0):
        rows.append((UNKNOWN, "stage not known here"))
    out = [f'<text x="{MARGIN}" y="{MARGIN + 40}" font-size="13">stage</text>']
    y = MARGIN + 60
    for fill, text in rows:
        out.append(f'<circle cx="{MARGIN + 8}" cy="{y - 4}" r="6" fill="{fill}" '
                   f'stroke="#263238"/><text x="{MARGIN + 20}" y="{y}" font-size="12">'
                   f'{escape(text)}</text>')
        y += 20
    y += 10
    out.append(f'<circle cx="{MARGIN + 8}" cy="{y - 4}" r="6" fill="white" stroke="#d50000" '
               f'stroke-width="3"/><text x="{MARGIN + 20}" y="{y}" font-size="12">'
               f'articulation point ({len(report.get("articulation_points", ()))})</text>')
    y += 20
    out.append(f'<line x1="{MARGIN}" y1="{y - 4}" x2="{MARGIN + 16}" y2="{y - 4}" '
               f'stroke="#d50000" stroke-width="2.5" stroke-dasharray="6 3"/>'
               f'<text x="{MARGIN + 20}" y="{y}" font-size="12">'
               f'bridge ({len(report.get("bridges", ()))})</text>')
    y += 20
    out.append(f'<line x1="{MARGIN}" y1="{y - 4}" x2="{MARGIN + 16}" y2="{y - 4}" '
               f'stroke="#00c853" stroke-width="2" stroke-dasharray="2 4"/>'
               f'<text x="{MARGIN + 20}" y="{y}" font-size="12">suggested cable</text>')
    y += 30
    survival = report.get("survival", {})
    for f, s in survival.items():
        out.append(f'<text x="{MARGIN}" y="{y}" font-size="12">lose {float(f):.0%}: '
                   f'{s:.0%} of survivors in one piece</text>')
        y += 18
    return out
