"""Overlay throughput: IPv4 carried hop by hop over IPv6 next hops, against native
IPv6, over the same three-hop path, in one run.

    python -m bench.overlay [--seconds 5] [--rounds 3] [--together]

A line:4 lab (n1 - n2 - n3 - n4) runs FRR and the overlay agent on every node.
iperf3 in n4 serves both families; from n1, rounds alternate a TCP stream to
n4's IPv4 /32 (routed by the overlay: `via inet6` on every hop) and one to n4's
IPv6 loopback (the underlay), so load from elsewhere on the machine hits both
alike. The ratio is the medians' quotient (target >= 0.95). A pod-to-pod IPv4
stream (CNI bridge + veth at each end) is measured too, for reference.

With --together the IPv4 and the IPv6 stream of a round run at the same time,
sharing the CPU: on a machine whose other load comes and goes, that compares
them under the very same conditions (each gets about half of what it would
alone; the ratio is what matters).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench.common import lab, save
from lab.netns import Lab
from lab.stack import add_pod, kernel_routes, remembered_block
from mesh import pods
from mesh.topology import parse

PORT = 5201


def start_iperf(the_lab: Lab, src: int, target: str, seconds: int, pod: str | None = None,
                port: int = PORT) -> subprocess.Popen[str]:
    argv = ["iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-J"]
    ns = (f"{the_lab.prefix}{the_lab.node(src).name}-{pod}" if pod
          else the_lab.node(src).namespace)
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str], target: str, seconds: int) -> float:
    """Receiver-side throughput in Gbit/s of one TCP stream."""
    out, err = proc.communicate(timeout=seconds + 30)
    data = json.loads(out or "{}")
    if proc.returncode != 0 or "error" in data:
        raise RuntimeError(f"iperf3 to {target} failed: {data.get('error', err)}")
    bps: float = data["end"]["sum_received"]["bits_per_second"]
    return bps / 1e9


def iperf(the_lab: Lab, src: int, target: str, seconds: int, pod: str | None = None) -> float:
    return result(start_iperf(the_lab, src, target, seconds, pod), target, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--together", action="store_true",
                   help="run each round's IPv4 and IPv6 streams at the same time")
    args = p.parse_args()
    with lab() as the_lab:
        the_lab.up(parse("line:4"))  # the node runtime in every node: the overlay with it
        the_lab.wait_converged(60)
        deadline = time.monotonic() + 60
        while not all(remembered_block(the_lab, n) for n in range(1, 5)) or \
                len(kernel_routes(the_lab, 1, "4", proto="77")) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("the overlay did not route every block in 60 s")
            time.sleep(0.3)
        block4 = remembered_block(the_lab, 4)
        assert block4 is not None
        v4_target = str(pods.node_address(block4))
        v6_target = the_lab.node(4).loopback
        hops = kernel_routes(the_lab, 1, "4", proto="77")[str(block4)].hops
        the_lab.spawn(4, ["iperf3", "-s", "-p", str(PORT)], "iperf3")
        the_lab.spawn(4, ["iperf3", "-s", "-p", str(PORT + 1)], "iperf3-b")
        add_pod(the_lab, 1, "client")
        server_pod = add_pod(the_lab, 4, "server")
        the_lab.spawn(4, ["ip", "netns", "exec", f"{the_lab.prefix}n4-server", "iperf3", "-s",
                          "-p", str(PORT)], "iperf3-pod")
        time.sleep(1)  # iperf3 servers listening
        v4: list[float] = []
        v6: list[float] = []
        pod: list[float] = []
        for r in range(args.rounds):
            if args.together:
                a = start_iperf(the_lab, 1, v4_target, args.seconds)
                b = start_iperf(the_lab, 1, v6_target, args.seconds, port=PORT + 1)
                v4.append(result(a, v4_target, args.seconds))
                v6.append(result(b, v6_target, args.seconds))
            else:
                v4.append(iperf(the_lab, 1, v4_target, args.seconds))
                v6.append(iperf(the_lab, 1, v6_target, args.seconds))
            pod.append(iperf(the_lab, 1, str(server_pod.ip), args.seconds, pod="client"))
            print(f"round {r + 1}: IPv4 overlay {v4[-1]:.2f} Gbit/s, native IPv6 "
                  f"{v6[-1]:.2f} Gbit/s, pod to pod {pod[-1]:.2f} Gbit/s", flush=True)
    summary_ = {
        "path": "n1 -> n2 -> n3 -> n4 (line:4, 3 hops)",
        "ipv4_next_hops_at_n1": [list(h) for h in hops],
        "seconds_per_stream": args.seconds, "rounds": args.rounds, "together": args.together,
        "ipv4_overlay_gbps": v4, "ipv6_native_gbps": v6, "pod_to_pod_ipv4_gbps": pod,
        "ratio_ipv4_over_ipv6": statistics.median(v4) / statistics.median(v6),
        "ratio_per_round": [a / b for a, b in zip(v4, v6, strict=True)],
    }
    print(json.dumps({k: summary_[k] for k in ("ratio_ipv4_over_ipv6", "ratio_per_round")}))
    save("overlay-together" if args.together else "overlay", summary_)
    sys.exit(0)


if __name__ == "__main__":
    main()
