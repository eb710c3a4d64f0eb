"""Shared by the benchmarks: a lab that is always removed, a site variant, figures."""

from __future__ import annotations

import atexit
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from firstboot.files import write_atomic
from lab.netns import Lab
from mesh.site import new_site_toml, parse_site

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent  # where `python -m bench.…` finds the package


def site_file(bfd_interval_ms: int | None = None, bfd_multiplier: int | None = None,
              grace: int | None = None, etcd_ms: tuple[int, int] | None = None) -> Path:
    """A fresh site, with the BFD timers, the control-plane grace or etcd's
    (heartbeat, election timeout) changed if asked."""
    text = new_site_toml("bench")
    if grace is not None:
        text = text.replace("grace = 300", f"grace = {grace}")
    if etcd_ms is not None:
        text = text.replace("etcd_heartbeat_ms = 500", f"etcd_heartbeat_ms = {etcd_ms[0]}")
        text = text.replace("etcd_election_ms = 5000", f"etcd_election_ms = {etcd_ms[1]}")
    if bfd_interval_ms is not None:
        text = text.replace("bfd_interval_ms = 100", f"bfd_interval_ms = {bfd_interval_ms}")
    if bfd_multiplier is not None:
        text = text.replace("bfd_multiplier = 3", f"bfd_multiplier = {bfd_multiplier}")
    parse_site(tomllib.loads(text))
    path = Path(f"/run/kubermesh/bench-{os.getpid()}.toml")
    write_atomic(path, text, 0o600)  # it holds the site's secrets
    atexit.register(path.unlink, missing_ok=True)  # gone when the benchmark ends
    return path


@contextmanager
def lab() -> Iterator[Lab]:
    """A lab that is always removed; when the benchmark fails, its logs are kept."""
    the_lab = Lab("b" + secrets.token_hex(3))
    try:
        yield the_lab
    except BaseException:
        kept = the_lab.down(keep_logs=True)
        if kept is not None:
            print(f"lab {the_lab.name}: logs kept in {kept}", file=sys.stderr)
        raise
    the_lab.down()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p95": percentile(values, 95),
            "min": min(values), "max": max(values)}


def save(name: str, data: object) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(f"results in {RESULTS / name}.json", file=sys.stderr)


def probe_while(the_lab: Lab, node: int, module: str, args: list[str], seconds: float,
                at: float, act: Callable[[], object]) -> tuple[float, str]:
    """Run `python -m module args` (a probe streaming for `seconds`) in the node's
    namespace; `at` seconds in, call `act` (a kill). Returns the wall-clock time of
    the act and the probe's output; the probe never outlives this call."""
    probe = subprocess.Popen(
        ["ip", "netns", "exec", the_lab.node(node).namespace, sys.executable, "-m", module,
         *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        time.sleep(at)
        acted_at = time.time()
        act()
        out, _ = probe.communicate(timeout=seconds + 30)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    return acted_at, out
