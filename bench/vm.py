"""VM benchmarks: the built image booted in QEMU (TCG here), cabled by UDP socket netdevs.

    python -m bench.vm join [--nodes 3]
    python -m bench.vm failover [--trials 3] [--equal]
    python -m bench.vm kubelets
    python -m bench.vm cluster [--nodes 3] [--cpus 2] [--memory 2048]

join: N VMs in a line power on together; for each, the time from power-on to
"mesh joined" (a route to every other node's loopback), read off its serial
console as the node agent prints it. Also the time to SSH, for scale.

failover: a triangle a-b-c. The a-c cable is the slow one (1 Gb/s against
10 Gb/s, so it costs more and a's traffic to c crosses b), unless --equal.
a pings c's loopback at 100 Hz; b goes silent: the last trial powers b off
(QEMU killed), earlier ones freeze it (QMP stop; to its neighbours the same: no
packet, carrier kept, so only BFD notices). The outage is the longest gap
between replies at a. A frozen b is resumed and the mesh reconverges between
trials. The image comes from $KUBERMESH_IMAGE or out/.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import save, summary
from image.kubernetes import CACHE
from image.kubesource import find_built
from tests.vm import cluster as kube
from tests.vm.mesh import Mesh, status, wait_status
from tests.vm.qemu import VM, poll

ROOT = Path(__file__).resolve().parents[1]
JOINED = re.compile(r"mesh joined: routes to all (\d+) other nodes")
INTERVAL = 0.01
STREAM = 30  # seconds of pings per trial
SILENT_AT = 10.0  # seconds into the stream


# Each unit's CPU seconds since boot, most first (systemd's cgroup accounting).
CPU_BY_UNIT = ("for u in $(systemctl list-units --type=service --state=active,activating "
               "--no-legend --plain | cut -d' ' -f1); do "
               "n=$(systemctl show -P CPUUsageNSec $u); "
               "case $n in ''|*[!0-9]*) ;; *) echo \"$((n / 1000000)) ms $u\";; esac; "
               "done | sort -rn | head -15")


def image() -> Path:
    raw = Path(os.environ.get("KUBERMESH_IMAGE", ROOT / "out")) / "kubermesh.raw"
    if not raw.is_file():
        raise SystemExit(f"no built image at {raw}: run ./dev.sh build first")
    return raw


def join(args: argparse.Namespace) -> dict[str, Any]:
    mesh = Mesh(image())
    try:
        vms = [mesh.vm(f"n{i}") for i in range(1, args.nodes + 1)]
        for x, y in itertools.pairwise(vms):
            mesh.cable(x, y)
        mesh.start(*vms)
        want = args.nodes - 1
        joined: dict[str, float] = {}
        deadline = time.monotonic() + args.timeout
        while len(joined) < len(vms):
            if time.monotonic() > deadline:
                raise SystemExit(f"not joined after {args.timeout:.0f} s: "
                                 f"{sorted(set(v.name for v in vms) - set(joined))}")
            for vm in vms:
                if vm.name in joined:
                    continue
                counts = [int(m) for m in JOINED.findall(vm.console_text())]
                if want in counts:
                    assert vm.started_at is not None
                    joined[vm.name] = time.monotonic() - vm.started_at
                    print(f"{vm.name}: mesh joined {joined[vm.name]:.1f} s after power-on",
                          flush=True)
            time.sleep(0.25)
        ssh = {vm.name: vm.wait_ssh() + 0.0 for vm in vms}  # already up, in most cases
        analyze = {vm.name: vm.ssh("systemd-analyze time", check=False).stdout.strip()
                   for vm in vms}
        # Where the time went, for the record: the runtime's way to ready, and its
        # own lines since boot (monotonic seconds).
        chain = {vm.name: vm.ssh("systemd-analyze critical-chain kubermesh-agent.service "
                                 "frr.service", check=False).stdout.strip() for vm in vms}
        # Who had the CPU on the way (a guest's CPU is the scarce thing under TCG).
        cpu = {vm.name: vm.ssh(CPU_BY_UNIT, check=False).stdout.strip() for vm in vms}
        blame = {vm.name: vm.ssh("systemd-analyze blame --no-pager | head -15",
                                 check=False).stdout.strip() for vm in vms}
        journal = {vm.name: vm.ssh("journalctl -b -o short-monotonic --no-pager "
                                   "-u kubermesh-agent -u frr | head -40",
                                   check=False).stdout.strip() for vm in vms}
        return {"nodes": args.nodes, "accel": mesh.accel, "joined_s": joined,
                "joined": summary(list(joined.values())), "ssh_wait_after_join_s": ssh,
                "systemd_analyze": analyze, "critical_chain": chain, "cpu_by_unit": cpu,
                "blame": blame, "journal": journal,
                "load": os.getloadavg()}
    finally:
        mesh.close()


ADMIN_KUBECONFIG = "/var/lib/kubermesh/pki/admin.conf"  # a slot holder's


def cluster(args: argparse.Namespace) -> dict[str, Any]:
    mesh = Mesh(image())
    try:
        vms = [mesh.vm(f"n{i}", cpus=args.cpus, memory_mib=args.memory)
               for i in range(1, args.nodes + 1)]
        for x, y in itertools.pairwise(vms):
            mesh.cable(x, y)
        mesh.start(*vms)
        marks: dict[str, dict[str, float]] = {vm.name: {} for vm in vms}
        hostnames: dict[str, str] = {}
        deadline = time.monotonic() + args.timeout

        def mark(vm: VM, what: str) -> None:
            if what not in marks[vm.name]:
                assert vm.started_at is not None
                marks[vm.name][what] = time.monotonic() - vm.started_at
                print(f"{vm.name}: {what} {marks[vm.name][what]:.1f} s after power-on",
                      flush=True)

        while not all("node Ready" in m for m in marks.values()):
            if time.monotonic() > deadline:
                raise SystemExit(f"not every node Ready after {args.timeout:.0f} s: {marks}")
            holder = None
            for vm in vms:
                try:
                    r = vm.ssh("kubermesh status --json", timeout=120, check=False)
                except subprocess.TimeoutExpired:  # a busy TCG guest
                    continue
                if r.returncode != 0:  # not up yet
                    continue
                st = json.loads(r.stdout)
                hostnames[vm.name] = st["hostname"]
                if st["routes_to"] == args.nodes - 1:
                    mark(vm, "mesh joined")
                cp = st["control_plane"]
                if cp.get("slot") is not None:
                    if cp.get("kubernetes", {}).get("state") == "running":
                        mark(vm, "control plane running")
                    if {x["service"]: x["state"] for x in st["anycast"]}.get(
                            "apiserver") == "local":
                        mark(vm, "apiserver ready")
                        holder = vm
                if st["stage"] == "kubelet":
                    mark(vm, "kubelet running")
            if holder is not None:
                ready = kube.ready_nodes(holder, ADMIN_KUBECONFIG)
                for vm in vms:
                    if hostnames.get(vm.name) in ready:
                        mark(vm, "node Ready")
            time.sleep(5)
        return {"nodes": args.nodes, "cpus": args.cpus, "memory_mib": args.memory,
                "accel": mesh.accel, "after_power_on_s": marks,
                "node_ready": summary([m["node Ready"] for m in marks.values()]),
                "load": os.getloadavg()}
    finally:
        kept = mesh.close(keep_logs=sys.exc_info()[0] is not None)
        if kept is not None:
            print(f"VM consoles kept in {kept}", file=sys.stderr)


def kubelets(args: argparse.Namespace) -> dict[str, Any]:
    """The image's kubelets in VMs, the control plane in the lab (tests/vm/cluster.py)."""
    raw = image()
    manifest = json.loads((raw.parent / "manifest.json").read_text())
    if manifest["kubernetes"]["source"] == "none":
        raise SystemExit(f"{raw} has no Kubernetes: {manifest['kubernetes']['why_none']}")
    site_file = raw.parent / "demo-site.toml"
    built = find_built(CACHE)
    if not site_file.is_file() or built is None:
        raise SystemExit(f"needs {site_file} (an image built without --site) and a "
                         f"Kubernetes build in {CACHE}: run ./dev.sh build")
    failed = False
    with tempfile.TemporaryDirectory() as scratch, \
            kube.kubelet_cluster(raw, site_file, built.binaries, lambda: failed) as c:
        try:
            ready = kube.join(c, kube.admin_kubeconfig(c, Path(scratch) / "admin.conf"))
            for name, seconds in ready.items():
                print(f"{name}: power-on -> Node Ready {seconds:.1f} s", flush=True)
            w1 = c.vms["w1"]
            kube.deploy_web(w1, Path(scratch))
            kube.spread(c)
            c.vms["w2"].stop()  # a silent death: powered off
            died = time.monotonic()
            kube.all_on(c, "w1", 600)
            replaced = time.monotonic() - died
            print(f"w2's pods Running on w1 {replaced:.1f} s after w2 died", flush=True)
        except BaseException:
            failed = True
            raise
    return {"accel": c.mesh.accel, "holders": c.holders, "power_on_to_node_ready_s": ready,
            "pods_running_elsewhere_after_worker_death_s": replaced, "load": os.getloadavg()}


def outage(ping_output: str) -> float:
    """The longest gap between replies, minus the interval (`ping -D` timestamps)."""
    stamps = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", ping_output, re.M)]
    if len(stamps) < 2:
        raise RuntimeError(f"too few replies:\n{ping_output[-2000:]}")
    return max(b - a for a, b in itertools.pairwise(stamps)) - INTERVAL


def path_of(a: VM, dst: str) -> str:
    return str(json.loads(a.ssh(f"ip -6 -j route get {dst}").stdout)[0]["dev"])


def path_if(a: VM, dst: str, dev: str) -> str | None:
    """a's path to dst if it leaves by dev, else None (for polling)."""
    return dev if path_of(a, dst) == dev else None


def stream(a: VM, dst: str, out: dict[str, str]) -> None:
    out["text"] = a.ssh(f"ping -6 -D -n -i {INTERVAL} -w {STREAM} {dst}", timeout=STREAM + 60,
                        check=False).stdout


def failover(args: argparse.Namespace) -> dict[str, Any]:
    mesh = Mesh(image())
    try:
        a, b, c = (mesh.vm(n) for n in "abc")
        fast, slow = 10000, (10000 if args.equal else 1000)
        mesh.cable(a, b, speed_mbps=fast)
        mesh.cable(b, c, speed_mbps=fast)
        mesh.cable(a, c, speed_mbps=slow)
        mesh.start(a, b, c)
        for vm in (a, b, c):
            vm.wait_ssh()
        sts = {vm.name: wait_status(vm, "routes to the other two",
                                    lambda s: s["routes_to"] == 2, 900) for vm in (a, b, c)}
        dst = sts["c"]["loopback"]
        b_rid = sts["b"]["router_id"]
        trials: list[dict[str, Any]] = []
        for trial in range(args.trials):
            wait_status(a, "routes to b and c", lambda s: s["routes_to"] == 2, 600)
            # a's cable to b; after a frozen b resumes, the route comes back to it
            # only once the adjacency and BFD are up again.
            [via_b] = [x["name"] for x in status(a)["links"] if x["neighbour"] == b_rid]
            if args.equal:
                before = path_of(a, dst)
            else:
                before = poll(f"a's route to c through b ({via_b})",
                              functools.partial(path_if, a, dst, via_b), 600, every=1)
            out: dict[str, str] = {}
            pinger = threading.Thread(target=stream, args=(a, dst, out))
            pinger.start()
            time.sleep(SILENT_AT)
            last = trial == args.trials - 1
            how = "powered off" if last else "frozen"
            if last:
                b.stop()
            else:
                b.qmp("stop")
            pinger.join()
            after = path_of(a, dst)
            gap = outage(out["text"])
            trials.append({"b": how, "path_before": before, "path_after": after,
                           "crossed_b": before == via_b, "outage_s": gap})
            print(f"trial {trial + 1}: b {how}; a->c via {before} then {after}: "
                  f"outage {gap:.3f} s", flush=True)
            if not last:
                b.qmp("cont")
        return {"equal_cost": args.equal, "accel": mesh.accel, "trials": trials,
                "outage": summary([t["outage_s"] for t in trials]),
                "status_c": status(c)["stage"], "load": os.getloadavg()}
    finally:
        mesh.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.vm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    j = sub.add_parser("join", help="power-on to mesh joined, per VM")
    j.add_argument("--nodes", type=int, default=3)
    j.add_argument("--timeout", type=float, default=1800)
    j.set_defaults(func=join)
    f = sub.add_parser("failover", help="a->c outage when b goes silent in a triangle")
    f.add_argument("--trials", type=int, default=3)
    f.add_argument("--equal", action="store_true", help="every cable the same speed")
    f.set_defaults(func=failover)
    k = sub.add_parser("kubelets", help="VMs as kubelets of the lab's control plane: "
                       "power-on to Node Ready, and a dead worker's pods elsewhere")
    k.set_defaults(func=kubelets)
    c = sub.add_parser("cluster", help="power-on to Node Ready, per VM")
    c.add_argument("--nodes", type=int, default=3)
    c.add_argument("--cpus", type=int, default=2)
    c.add_argument("--memory", type=int, default=2048, help="MiB per VM")
    c.add_argument("--timeout", type=float, default=2400)
    c.set_defaults(func=cluster)
    args = p.parse_args()
    result = args.func(args)
    save(f"vm-{args.command}" + ("-equal" if getattr(args, "equal", False) else ""), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
