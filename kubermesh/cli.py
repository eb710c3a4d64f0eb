"""The `kubermesh` command."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firstboot import status as nodestatus
from firstboot.files import write_atomic
from image.errors import BuildError
from image.site import check_private
from kubermesh.ui import Failure, say, step
from mesh import site as sitefile

if TYPE_CHECKING:
    from lab.netns import Lab, NodeStatus


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lead = argv.index("agent") if "agent" in argv else -1
    if lead >= 0 and all(a == "--debug" for a in argv[:lead]):  # the runtime's own options
        argv = argv[lead:] + (["--debug"] if lead else [])
        # Imported here: its netlink library costs every other command seconds
        # to import on a slow node (a minute under emulation).
        from firstboot import agent

        return agent.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (Failure, BuildError) as e:
        say(f"kubermesh: {e.message}")
        if e.hint:
            say(f"  hint: {e.hint}")
        return 1
    except sitefile.SiteError as e:
        if len(e.problems) == 1:
            say(f"kubermesh: {e.source}: {e.problems[0]}")
        else:
            say(f"kubermesh: the site file is not valid ({len(e.problems)} problems):")
            for p in e.problems:
                say(f"  {e.source}: {p}")
        return 1
    except Exception as e:
        # Only lab commands import the lab, and the image has none: no import here.
        netns = sys.modules.get("lab.netns")
        if netns is None or not isinstance(e, netns.LabError) or args.debug:
            raise
        say(f"kubermesh: {e}")
        return 1
    except KeyboardInterrupt:
        say("kubermesh: interrupted")
        return 130
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubermesh", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=lambda _: p.print_help())
    sub = p.add_subparsers(title="commands")

    site = sub.add_parser("site", help="create and check site files")
    site.set_defaults(func=lambda _: site.print_help())
    ssub = site.add_subparsers(title="site commands")
    init = ssub.add_parser("init", help="write a fresh site file with new secrets")
    init.add_argument("path", type=Path)
    init.add_argument("--name", default="site", help="site name (default: site)")
    init.add_argument("--pod-range", type=IPv4Network, default=sitefile.DEFAULT_POD_RANGE)
    init.add_argument("--service-range", type=IPv4Network,
                      default=sitefile.DEFAULT_SERVICE_RANGE)
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=site_init)
    check = ssub.add_parser("check", help="validate a site file")
    check.add_argument("path", type=Path)
    check.set_defaults(func=site_check)
    cert = ssub.add_parser("boot-cert", help="export the site's boot certificate, for "
                           "enrolling in PCs' firmware (UEFI db) before turning Secure Boot on")
    cert.add_argument("path", type=Path, help="the site file")
    cert.add_argument("--der", type=Path, metavar="FILE",
                      help="write it DER-encoded to FILE (what firmware setup menus read) "
                           "instead of PEM to standard output")
    cert.set_defaults(func=site_boot_cert)

    nodes = sub.add_parser("nodes", help="netbooted PCs asking to join: list and approve them")
    nodes.set_defaults(func=lambda _: nodes.print_help())
    nsub = nodes.add_subparsers(title="nodes commands")
    pending = nsub.add_parser("pending", help="join requests held anywhere in the mesh")
    pending.add_argument("--all", action="store_true", help="approved ones too")
    pending.add_argument("--json", action="store_true")
    pending.add_argument("--file", type=Path, default=nodestatus.STATUS_FILE)
    pending.set_defaults(func=nodes_pending)
    approve = nsub.add_parser("approve", help="let a netbooted PC in: it gets the site")
    approve.add_argument("id", help="its node id (16 hex digits, from `kubermesh nodes pending`)")
    approve.add_argument("--site", type=Path, default=Path("/etc/kubermesh/site.toml"))
    approve.add_argument("--file", type=Path, default=nodestatus.STATUS_FILE)
    approve.set_defaults(func=nodes_approve)

    sub.add_parser("agent", help="the node runtime (see `kubermesh agent --help`)")
    wait = sub.add_parser("wait", help="until this node reaches a stage (for units' ordering)")
    wait.add_argument("--stage", required=True, choices=[str(s) for s in nodestatus.Stage])
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    wait.add_argument("--file", type=Path, default=nodestatus.STATUS_FILE)
    wait.set_defaults(func=node_wait)
    status = sub.add_parser("status", help="this node: identity, links, neighbours, stage")
    status.add_argument("--json", action="store_true")
    status.add_argument("--file", type=Path, default=nodestatus.STATUS_FILE)
    status.set_defaults(func=node_status)

    mesh = sub.add_parser("mesh", help="the whole mesh, as this node's OSPFv3 sees it")
    mesh.set_defaults(func=lambda _: mesh.print_help())
    msub = mesh.add_subparsers(title="mesh commands")
    report = msub.add_parser("report", help="single points of failure, random loss simulated, "
                             "and the cables that would help most")
    report.add_argument("--file", type=Path, default=nodestatus.STATUS_FILE)
    _report_arguments(report)
    report.set_defaults(func=mesh_report)

    lab = sub.add_parser("lab", help="a mesh of network namespaces running real FRR")
    lab.set_defaults(func=lambda _: lab.print_help())
    lsub = lab.add_subparsers(title="lab commands")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = lsub.add_parser(name, help=help)
        c.add_argument("--lab", default="lab", help="lab name (default: lab)")
        return c

    up = cmd("up", "create the lab and wait until it has converged")
    up.add_argument("--topology", required=True,
                    help="line:N, ring:N, grid:RxC, random:N:K[:SEED] or "
                         "floor:RxC[:K][:SEED] (PCs over a warehouse floor)")
    up.add_argument("--site", type=Path, help="site file (default: a fresh one)")
    up.add_argument("--timeout", type=float, help="seconds to wait for convergence")
    up.add_argument("--no-wait", action="store_true", help="do not wait for convergence")
    up.add_argument("--frr-only", action="store_true",
                    help="FRR alone, configured by the lab, without the node runtime")
    up.add_argument("--services", action="append", default=[], metavar="NAME@NODES",
                    help="a real anycast service on some nodes, e.g. etcd@n3,n7,n12")
    up.add_argument("--kubernetes", default="auto", metavar="DIR|auto|none",
                    help="where kube-apiserver, kube-controller-manager and kube-scheduler "
                         "are, which the control-plane slot holders run (default auto: "
                         "those `kubermesh build` made from Debian's source, if it has)")
    up.set_defaults(func=lab_up)
    lrep = cmd("report", "the lab's mesh as one node's OSPFv3 sees it: what `kubermesh mesh "
                         "report` says on a node")
    lrep.add_argument("--node", default="1", help="whose view (default: n1)")
    _report_arguments(lrep)
    lrep.set_defaults(func=lab_report)
    st = cmd("status", "adjacencies and routes of every node")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=lab_status)
    kill = cmd("kill", "kill a node silently: daemons killed, forwarding off, cables up")
    kill.add_argument("node")
    kill.set_defaults(func=lambda a: say(f"killed {_lab(a).kill(a.node).name}"))
    revive = cmd("revive", "start a killed node's daemons again")
    revive.add_argument("node")
    revive.set_defaults(func=lambda a: say(f"revived {_lab(a).revive(a.node).name}"))
    for name, verb in (("cut", "unplug"), ("plug", "plug in")):
        c = cmd(name, f"{verb} the cable between two nodes")
        c.add_argument("a")
        c.add_argument("b")
        c.set_defaults(func=lab_cable, verb=name)
    ping = cmd("ping", "ping one node's loopback from another")
    ping.add_argument("src")
    ping.add_argument("dst")
    ping.set_defaults(func=lab_ping)
    down = cmd("down", "remove every namespace, process and file of the lab")
    down.set_defaults(func=lab_down)

    build = sub.add_parser("build", help="build the bootable image (needs root)")
    build.add_argument("--site", type=Path, help="site file to bake in (default: a demo site)")
    build.add_argument("--kubernetes", default="auto",
                       metavar="auto|upstream|debian-source|none|DIR",
                       help="where the Kubernetes binaries come from (default: auto, upstream "
                            "where reachable, else 1.20 built from Debian's source package)")
    build.add_argument("--kubernetes-cache", type=Path, default=None, metavar="DIR",
                       help="where Kubernetes built from source is kept, keyed by what it is "
                            "built from (default: /var/cache/kubermesh/kubernetes)")
    build.add_argument("--output", type=Path, default=Path("out"),
                       help="output directory (default: out)")
    build.set_defaults(func=image_build)
    return p


def _report_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--json", action="store_true")
    c.add_argument("--samples", type=int, default=200,
                   help="random losses simulated per fraction (default 200)")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--suggest", type=int, default=3, help="cables to suggest (default 3)")
    c.add_argument("--svg", type=Path, metavar="FILE",
                   help="also draw the mesh into FILE: nodes coloured by stage (the status "
                        "light's colours), single points of failure in red")


def _print_report(args: argparse.Namespace, frr_run: Path, router_id: str,
                  loopback: str, stages: Callable[[], dict[str, str]]) -> None:
    """The report on the mesh as this node's ospf6d sees it; `stages`: the stage of
    each node, where known (router-id -> stage), for the picture."""
    from ipaddress import IPv6Address

    from firstboot.meshreport import live_mesh
    from firstboot.vty import VtyError
    from mesh import resilience

    if args.samples < 1:
        raise Failure("--samples: must be 1 or more")
    try:
        mesh = live_mesh(frr_run, router_id, IPv6Address(loopback))
    except VtyError as e:
        raise Failure(f"ospf6d does not answer ({e})",
                      hint="the report is OSPFv3's view: is FRR running? (systemctl status frr)"
                      ) from None
    r = resilience.report(mesh, samples=args.samples, seed=args.seed, suggest=args.suggest)
    print(json.dumps(r, indent=1) if args.json else resilience.words(r))
    if args.svg is not None:
        from mesh import picture

        title = (f"{mesh.names.get(router_id, router_id)}'s view: {r['nodes']} nodes, "
                 f"{r['cables']} cables, {time.strftime('%Y-%m-%d %H:%M')}")
        try:
            write_atomic(args.svg, picture.svg(mesh, r, stages(), title, args.seed), 0o644)
        except OSError as e:
            raise Failure(f"--svg: cannot write {args.svg}: {e.strerror or e}") from None
        say(f"picture of the mesh written to {args.svg}")


def mesh_report(args: argparse.Namespace) -> None:
    st = _read_status(args.file)
    if not st.router_id:
        raise Failure("this node is not on the mesh yet (no router-id in its status)",
                      hint="kubermesh status")
    from firstboot.paths import NodePaths

    # A node knows its own stage; the others' are not in the link-state database.
    _print_report(args, NodePaths().frr_run, st.router_id, st.loopback,
                  lambda: {st.router_id: str(st.stage)})


def lab_report(args: argparse.Namespace) -> None:
    the_lab = _lab(args)
    n = the_lab.node(args.node)  # a LabError names what is wrong
    _print_report(args, the_lab.node_dir(n) / "run", n.router_id, n.loopback,
                  lambda: {s.router_id: s.stage for s in the_lab.status() if s.stage})


def _read_status(path: Path) -> nodestatus.NodeStatus:
    try:
        return nodestatus.read(path)
    except FileNotFoundError:
        raise Failure(f"no node status at {path}",
                      hint="the node runtime writes it: systemctl status kubermesh-agent"
                      ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Failure(f"{path} is not a node status ({type(e).__name__}: {e})",
                      hint="the node runtime rewrites it every 2 s; is it running?") from None


def node_status(args: argparse.Namespace) -> None:
    st = _read_status(args.file)
    if args.json:
        d = st.to_json()
        d["stale"] = st.stale()
        print(json.dumps(d, indent=1))
    else:
        print(nodestatus.render(st))


def _mesh_nodes(path: Path) -> list[str]:
    """This node's and every node it routes to: their loopbacks."""
    st = _read_status(path)
    if st.stale():
        raise Failure(f"{path} is stale: the node runtime is not running",
                      hint="systemctl status kubermesh-agent")
    return [x for x in (st.loopback, *st.routed) if x]


def _held(path: Path) -> list[Any]:
    from firstboot import neighbours

    nodes = _mesh_nodes(path)
    found, silent = neighbours.held_requests(nodes)
    for node, why in sorted(silent.items()):
        say(f"kubermesh: {node} did not answer ({why}); its requests are not listed")
    return found


def nodes_pending(args: argparse.Namespace) -> None:
    import time

    held = [h for h in _held(args.file) if args.all or h.request["state"] != "approved"]
    if args.json:
        print(json.dumps([{"holder": h.holder, **h.request} for h in held], indent=1))
        return
    if not held:
        say("no join requests" + ("" if args.all else " waiting"))
        return
    # key: compare it with the one the joining PC's console shows before approving.
    print(f"{'id':<18}{'state':<10}{'age':>6}  {'key':<25}{'hardware':<44} via")
    for h in sorted(held, key=lambda x: x.request["since"]):
        r = h.request
        age = f"{time.time() - r['since']:.0f}s"
        print(f"{r['id']:<18}{r['state']:<10}{age:>6}  {r.get('key', '?'):<25}"
              f"{r['hardware']:<44} {h.holder} ({r['client']})")


def nodes_approve(args: argparse.Namespace) -> None:
    from firstboot import neighbours

    if not re.fullmatch(r"[0-9a-f]{16}", args.id):
        raise Failure(f"{args.id!r} is not a node id (16 hex digits)",
                      hint="kubermesh nodes pending lists them")
    try:
        secret = sitefile.load_site(args.site).secrets.ospf_key
    except PermissionError:
        raise Failure(f"{args.site} is readable by root only",
                      hint="approving hands out the site's secrets: run it as root") from None
    holders = [h.holder for h in _held(args.file) if h.request["id"] == args.id]
    if not holders:
        raise Failure(f"no node of the mesh holds a join request {args.id}",
                      hint="kubermesh nodes pending --all")
    for holder in holders:
        try:
            answer = neighbours.approve(holder, args.id, secret)
        except OSError as e:
            raise Failure(f"approving {args.id} on {holder}: {e}") from None
        say(f"approved {args.id} ({answer['hardware']}) on {holder}: it takes the site "
            "and joins")


def node_wait(args: argparse.Namespace) -> None:
    """Poll the status file (cheap: no netlink) until the stage is reached."""
    import time

    want = nodestatus.Stage[args.stage.upper()]
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        try:
            st = nodestatus.read(args.file)
            if not st.stale() and st.stage >= want:
                say(f"stage {st.stage} reached (waited for {want})")
                return
            last = st.stage
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not written yet, or being replaced
        if time.monotonic() > deadline:
            raise Failure(f"stage {want} not reached after {args.timeout:.0f} s "
                          f"(last: {last or 'no status'})",
                          hint="kubermesh status; journalctl -u kubermesh-agent")
        time.sleep(0.5)


def image_build(args: argparse.Namespace) -> None:
    from image.build import Options, build  # the image build's imports stay out of other commands

    opts = Options(output=args.output, site=args.site, kubernetes=args.kubernetes)
    if args.kubernetes_cache is not None:
        opts = replace(opts, kubernetes_cache=args.kubernetes_cache.resolve())
    build(opts)


def site_init(args: argparse.Namespace) -> None:
    path: Path = args.path
    if path.exists() and not args.force:
        raise Failure(f"{path} exists already", hint="use --force to replace it")
    text = sitefile.new_site_toml(args.name, args.pod_range, args.service_range)
    sitefile.parse_site(tomllib.loads(text), str(path))  # refuse bad options
    write_atomic(path, text, 0o600)  # it holds secrets
    say(f"wrote {path} (readable by its owner only: it holds the site's secrets)")


def site_check(args: argparse.Namespace) -> None:
    check_private(args.path)  # as `kubermesh build --site` does
    s = sitefile.load_site(args.path)
    say(f"{args.path}: valid site {s.name!r}: ULA {s.mesh.ula}, pods {s.pods.range} "
        f"({s.pods.blocks} blocks of /{s.pods.block_prefix}), services {s.services.range}, "
        f"anycast {', '.join(f'{k}={v}' for k, v in s.anycast.items())}")


def site_boot_cert(args: argparse.Namespace) -> None:
    check_private(args.path)
    s = sitefile.load_site(args.path)
    if args.der is None:
        sys.stdout.write(s.boot.certificate)
        return
    der = sitefile.certificate_der(s.boot.certificate)
    write_atomic(args.der, der, 0o644)  # public: it is the certificate, not the key
    say(f"wrote {args.der}: the boot certificate of site {s.name!r}, DER ({len(der)} bytes)")


def _lab(args: argparse.Namespace) -> Lab:
    try:
        from lab.netns import Lab
    except ImportError:
        raise Failure("the lab is not part of the node image",
                      hint="run `kubermesh lab` from a checkout (./dev.sh setup)") from None

    if os.geteuid() != 0:
        raise Failure("the lab needs root (network namespaces, FRR)", hint="run it with sudo")
    return Lab(args.lab)


def _lab_kubernetes(choice: str, without: object) -> Path | None:
    """--kubernetes: a directory, none, or auto (the cached build, where there is one
    and the lab runs the slot holders' etcd)."""
    if choice == "none":
        return None
    if choice != "auto":
        return Path(choice)
    if without:
        return None
    from image.kubernetes import CACHE
    from image.kubesource import find_built

    built = find_built(CACHE)
    if built is None:
        say(f"  no Kubernetes build in {CACHE}: no control plane (`kubermesh build` "
            "makes one)")
        return None
    say(f"  the slot holders run the Kubernetes control plane from {built.binaries}")
    return built.binaries


def lab_up(args: argparse.Namespace) -> None:
    lab = _lab(args)
    from lab.netns import parse_topology

    topo = parse_topology(args.topology)
    if args.site:
        sitefile.load_site(args.site)
    with step(f"Creating lab {lab.name!r}: {topo.spec}"):
        lab.up(topo, args.site, progress=lambda m: say(f"  {m}"), agent=not args.frr_only,
               services=_services(args.services),
               kubernetes=_lab_kubernetes(args.kubernetes, args.frr_only or args.services))
    if not args.no_wait:
        timeout = args.timeout or 30 + topo.nodes
        with step("Waiting for every node to route to every other"):
            took = lab.wait_converged(timeout, progress=lambda m: say(f"  {m}"))
        say(f"converged in {took:.1f} s after FRR started")
    say(f"lab {lab.name!r} is up: `kubermesh lab status`, `kubermesh lab down`")


def _services(specs: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, nodes = spec.partition("@")
        try:
            members = [int(n.strip().removeprefix("n")) for n in nodes.split(",")]
        except ValueError:
            members = []
        if not sep or not name or not members:
            raise Failure(f"--services {spec!r}: expected NAME@NODES, e.g. etcd@n3,n7,n12")
        out.setdefault(name, []).extend(members)
    return out


def lab_status(args: argparse.Namespace) -> None:
    statuses = _lab(args).status()
    if args.json:
        print(json.dumps([_status_json(s) for s in statuses], indent=1))
        return
    print(f"{'node':<6}{'loopback':<42}{'router-id':<17}{'full adj':>9}{'routes':>10}"
          f"  {'stage':<10}{'pod block':<18} neighbours")
    for s in statuses:
        routes = f"{s.routes_to}/{s.expected}" if s.alive else "dead"
        nbrs = " ".join(f"{a.neighbour}:{a.state}" for a in s.adjacencies)
        print(f"{s.name:<6}{s.loopback:<42}{s.router_id:<17}{s.full:>9}{routes:>10}"
              f"  {s.stage or '-':<10}{s.pod_block or '-':<18} {nbrs}")


def _status_json(s: NodeStatus) -> dict[str, object]:
    d = asdict(s)
    d["full_adjacencies"] = s.full
    return d


def lab_cable(args: argparse.Namespace) -> None:
    lab = _lab(args)
    getattr(lab, args.verb)(args.a, args.b)
    say(f"{args.verb}: {lab.node(args.a).name} - {lab.node(args.b).name}")


def lab_ping(args: argparse.Namespace) -> None:
    lab = _lab(args)
    if not lab.ping(args.src, args.dst):
        raise Failure(f"{args.src} cannot reach {args.dst} ({lab.node(args.dst).loopback})")
    say(f"{args.src} reaches {args.dst} ({lab.node(args.dst).loopback})")


def lab_down(args: argparse.Namespace) -> None:
    lab = _lab(args)
    with step(f"Removing lab {lab.name!r}"):
        lab.down()
    say(f"removed {lab.removed} namespaces")


if __name__ == "__main__":
    sys.exit(main())
