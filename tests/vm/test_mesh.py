"""First boot joins the mesh: booted images find their neighbours and route for
each other, carry IPv4 pod traffic over IPv6, and report what they see.

Guests (tests/vm/conftest.py): a line a-b-c; d cabled to c and powered on while
the others run; a twin of a behind d, its cable pulled until the last test.
Ordered: b's reboot overlaps d's and the twin's boots; the twins come last.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.vm.conftest import Guests, Image
from tests.vm.mesh import nic_with_mac, status, wait_status
from tests.vm.qemu import VM, poll

pytestmark = pytest.mark.vm

JOIN_TIMEOUT = 900.0  # a TCG boot on a shared 2-core host, then OSPF
# An emulated guest on a loaded host can miss BFD's 300 ms now and then (ospf6d
# logs hellos sent seconds late while others boot); the adjacency then flaps
# and re-forms within seconds. Checks of traffic retry for this long.
SETTLE = 180.0


def succeeds(vm: VM, command: str, timeout: float = SETTLE) -> str:
    """Run command on vm until it succeeds; its output. Fails with the last output."""
    last = ""

    def attempt() -> str | None:
        nonlocal last
        try:
            r = vm.ssh(command, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            return None
        last = r.stdout + r.stderr
        return r.stdout if r.returncode == 0 else None

    try:
        return poll(f"{vm.name}: `{command}`", attempt, timeout, every=3.0)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last output:\n{last}") from None


def routes_all(others: list[dict[str, Any]]) -> Any:
    """A status check: every other node known and its loopback routed."""
    def check(st: dict[str, Any]) -> bool:
        return (all(o["router_id"] in st["known"] and o["loopback"] in st["routed"]
                    for o in others) and st["routes_to"] == st["known_nodes"])
    return check


def joined(vms: list[VM]) -> list[dict[str, Any]]:
    """Wait until each VM routes to every other one's loopback; their statuses."""
    for vm in vms:
        vm.wait_ssh()
    first = [wait_status(vm, "an identity", lambda st: bool(st["loopback"])) for vm in vms]
    return [wait_status(vm, "routes to " + ", ".join(o["hostname"] for o in first if o is not me),
                        routes_all([o for o in first if o is not me]), JOIN_TIMEOUT)
            for vm, me in zip(vms, first, strict=True)]


@pytest.fixture(scope="module")
def line(guests: Guests) -> dict[str, dict[str, Any]]:
    a, b, c = joined([guests.a, guests.b, guests.c])
    return {"a": a, "b": b, "c": c}


@pytest.fixture(scope="module")
def late(guests: Guests, line: dict[str, dict[str, Any]]) -> Guests:
    """d and the twin power on, their cables pulled: d is cabled to the running c
    once b is back from its reboot (test_fourth_vm_joins_with_no_action). Cabled
    while b was away, d would see two of three slots held and take b's, never having
    seen it held."""
    guests.mesh.start(guests.d, guests.twin)
    return guests


def test_line_a_reaches_c_through_b(guests: Guests, line: dict[str, dict[str, Any]]) -> None:
    a, b, c = line["a"], line["b"], line["c"]
    for name, st in line.items():
        vm = getattr(guests, name)
        assert st["identity"] == f"dmi:{vm.uuid}"  # the SMBIOS UUID QEMU was given
        assert st["hostname"] == vm.ssh("hostname").stdout.strip()
        assert st["stage"] in ("routes", "overlay", "anycast", "kubelet"), st
        assert {x["router_id"] for x in line.values()} - {st["router_id"]} == set(st["known"])
    # a's only neighbour is b, on the link that carries the route to c.
    [link] = [x for x in a["links"] if x["neighbour"]]
    assert (link["neighbour"], link["state"]) == (b["router_id"], "Full")
    # (The management NIC has a default route, from user-mode networking's RAs:
    # the route to c must be OSPF's /128 over the mesh link.)
    def via_b() -> dict[str, Any] | None:
        out = guests.a.ssh(f"ip -6 -j route show {c['loopback']}/128 proto ospf").stdout
        routes: list[dict[str, Any]] = json.loads(out or "[]")
        return routes[0] if routes and routes[0].get("dev") == link["name"] else None

    route = poll("a's OSPF route to c over its link to b", via_b, SETTLE, every=3.0)
    assert route["gateway"].startswith("fe80::"), route
    succeeds(guests.a, f"ping -6 -c 3 -W 5 {c['loopback']}")
    # Two hops: a hop limit of 1 dies at b, 2 arrives.
    one = guests.a.ssh(f"ping -6 -c 1 -W 5 -t 1 {c['loopback']}", check=False)
    assert one.returncode != 0 and "Time exceeded" in one.stdout, one.stdout
    succeeds(guests.a, f"ping -6 -c 1 -W 5 -t 2 {c['loopback']}")
    # The management NIC stayed out of the mesh (the not_mesh credential).
    assert all(x["name"] != _mgmt_nic(guests.a) for x in a["links"])


def _mgmt_nic(vm: VM) -> str:
    return nic_with_mac(vm, vm.mgmt_mac)


def test_overlay_a_pings_c_pod_address(guests: Guests, line: dict[str, dict[str, Any]]) -> None:
    def overlay_up(st: dict[str, Any]) -> bool:
        o = st["overlay"]
        return bool(o["block"]) and o["blocks_routed"] == o["blocks_known"] == 2

    sts = {n: wait_status(getattr(guests, n), "the overlay up", overlay_up, 300) for n in "abc"}
    blocks = {st["overlay"]["block"] for st in sts.values()}
    assert len(blocks) == 3, blocks  # one block each
    a, c = sts["a"]["overlay"], sts["c"]["overlay"]
    succeeds(guests.a, f"ping -4 -c 3 -W 5 -I {a['node_address']} {c['node_address']}")
    # Routed hop by hop over IPv6 next hops: a's route to c's block is via inet6,
    # and b's mesh links carry no IPv4 address at all.
    [r] = json.loads(guests.a.ssh(f"ip -4 -j route show {c['block']}").stdout)
    assert r["via"]["family"] == "inet6" and r["via"]["host"].startswith("fe80::"), r
    for link in sts["b"]["links"]:
        v4 = json.loads(guests.b.ssh(f"ip -4 -j addr show dev {link['name']}").stdout)
        assert not any(x.get("addr_info") for x in v4), v4


def test_status_shows_overlay_and_anycast_stages(guests: Guests,
                                                 line: dict[str, dict[str, Any]]) -> None:
    st = wait_status(guests.a, "the overlay stage", lambda s: s["stage"] == "overlay", 300)
    text = guests.a.ssh("kubermesh status").stdout
    assert "stage     overlay" in text, text
    assert f"overlay   block {st['overlay']['block']}" in text, text
    # Nothing serves the apiserver here: its anycast address is shown unreachable,
    # which is what keeps the node at the overlay stage.
    assert {x["service"]: x["state"] for x in st["anycast"]}["apiserver"] == "unreachable"
    # No apiserver, so no kubelet started (or none in the image at all).
    kubelet = "not installed" if guests.a.ssh("test -x /usr/bin/kubelet", check=False
                                              ).returncode else "inactive"
    assert "anycast   apiserver" in text and f"kubelet   {kubelet}" in text, text
    # Each stage change went to the journal, with a structured field, and the console.
    stages = guests.a.ssh("journalctl -b -o json-pretty --output-fields=KUBERMESH_STAGE "
                          "-t kubermesh-agent KUBERMESH_STAGE=overlay", check=False).stdout
    assert '"KUBERMESH_STAGE" : "overlay"' in stages, stages
    # A stage the agent saw for less than a round is skipped (links -> overlay when
    # the routes came in between two rounds), so the console lines form a chain
    # from booting, each change leaving the stage the one before entered.
    console = guests.a.console_text()
    changes = re.findall(r"kubermesh: stage (\w+) -> (\w+)", console)
    assert changes and changes[0][0] == "booting", console[-3000:]
    assert all(x[1] == y[0] for x, y in itertools.pairwise(changes)), changes
    assert "overlay" in [entered for _, entered in changes], changes


def test_holders_too_small_for_the_control_plane_say_so(
        image: Image, guests: Guests, line: dict[str, dict[str, Any]]) -> None:
    """The VMs (1 CPU, 1 GiB) hold slots and run etcd, but are below what kubeadm asks
    of a control-plane node: they run no apiserver and say why, and so nothing serves
    the apiserver's anycast address. (The control plane itself, on holders that are
    large enough, is tested in the lab: tests/lab/test_kubernetes.py.)"""
    if image.manifest["kubernetes"]["source"] == "none":
        pytest.skip("no kube-apiserver in this image (" +
                    image.manifest["kubernetes"]["why_none"] + ")")

    def says_so(st: dict[str, Any]) -> bool:
        return "too small" in st["control_plane"].get("kubernetes", {}).get("state", "")

    for n in "abc":
        st = wait_status(getattr(guests, n), "the control plane declined as too small",
                         says_so, 300)
        assert {x["service"]: x["state"] for x in st["anycast"]}["apiserver"] == "unreachable"
    text = guests.a.ssh("kubermesh status").stdout
    assert "kube-cp   this node is too small for the Kubernetes control plane (1 CPU" in text
    assert unit_state(guests.a, "kubermesh-control-plane@kube-apiserver.service")[0] == \
        "inactive"


ETCD_KV = """
import base64, json, sys, urllib.request
url, op, key = sys.argv[1:4]
body = {"key": base64.b64encode(key.encode()).decode()}
if op == "put":
    body["value"] = base64.b64encode(sys.argv[4].encode()).decode()
req = urllib.request.Request(f"{url}/v3/kv/{op}", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
out = json.load(urllib.request.urlopen(req, timeout=10))
for kv in out.get("kvs", []):
    print(base64.b64decode(kv["value"]).decode())
"""


def etcd_kv(vm: VM, client_url: str, op: str, key: str, value: str = "") -> str:
    """put or range one key through etcd's v3 JSON gateway, from the guest."""
    script = ETCD_KV.replace("'", "'\\''")
    return succeeds(vm, f"python3 -c '{script}' {client_url} {op} {key} {value}", 120)


def test_slot_holders_run_one_etcd_cluster(guests: Guests,
                                           line: dict[str, dict[str, Any]]) -> None:
    """a, b and c take the site's three control-plane slots (its default count) and
    found one etcd cluster from the image's etcd: every member lists all three, and a
    key written through a's member is read through c's."""
    names = sorted(st["hostname"] for st in line.values())

    def one_cluster(st: dict[str, Any]) -> bool:
        cp = st["control_plane"]
        return (cp["slot"] is not None and cp["etcd"]["state"] == "running"
                and sorted(cp["etcd"]["members"]) == names)

    sts = {n: wait_status(getattr(guests, n), f"an etcd member of {', '.join(names)}",
                          one_cluster, 600) for n in "abc"}
    assert sorted(st["control_plane"]["slot"] for st in sts.values()) == [0, 1, 2], sts
    # Debian's own etcd.service stays masked: only the slot holder's member runs.
    assert unit_state(guests.a, "etcd.service")[0] == "inactive"
    assert unit_state(guests.a, "kubermesh-etcd.service")[0] == "active"
    value = secrets.token_hex(8)
    url = {n: f"http://[{st['loopback']}]:2379" for n, st in sts.items()}
    etcd_kv(guests.a, url["a"], "put", "kubermesh-vm-test", value)
    assert etcd_kv(guests.c, url["c"], "range", "kubermesh-vm-test").strip() == value


def unit_state(vm: VM, unit: str) -> tuple[str, int, int]:
    """(ActiveState, MainPID, NRestarts) of a unit."""
    # Key=value lines, in systemd's order rather than the order asked for.
    out = vm.ssh(f"systemctl show -p ActiveState -p MainPID -p NRestarts {unit}").stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return props["ActiveState"], int(props["MainPID"]), int(props["NRestarts"])


def test_dead_daemons_come_back(guests: Guests, line: dict[str, dict[str, Any]]) -> None:
    """On c: ospf6d killed is started again by watchfrr and its routes return; the
    agent killed is restarted by systemd, reports ready again and takes up its
    status where it was."""
    c = guests.c
    others = [line["a"], line["b"]]
    [old] = c.ssh("pidof ospf6d").stdout.split()
    c.ssh(f"kill -KILL {old}")

    def new_ospf6d() -> str | None:
        pids = c.ssh("pidof ospf6d", check=False).stdout.split()
        return pids[0] if pids and pids != [old] else None

    poll("watchfrr to start ospf6d again on c", new_ospf6d, 300, every=3)
    wait_status(c, "c's routes to a and b again", routes_all(others), 300)

    state, pid, restarts = unit_state(c, "kubermesh-agent.service")
    assert state == "active" and pid > 0, (state, pid)
    killed_at = float(c.ssh("date +%s.%N").stdout)
    c.ssh(f"kill -KILL {pid}")

    def restarted() -> tuple[str, int, int] | None:
        now = unit_state(c, "kubermesh-agent.service")
        # active, not activating: the new agent has sent READY=1 (Type=notify).
        return now if now[0] == "active" and now[1] not in (0, pid) else None

    _, _, after = poll("systemd to restart c's agent", restarted, 600, every=3)
    assert after == restarts + 1
    # READY=1 comes once FRR's configuration is written, maybe before the new
    # agent's first status: until then the file is the old agent's.
    st = wait_status(c, "a status written by the new agent, routing to a and b",
                     lambda st: st["updated"] > killed_at and routes_all(others)(st), 300)
    written = float(c.ssh("stat -c %.9Y /run/kubermesh/status.json").stdout)
    assert written > killed_at
    assert st["loopback"] == line["c"]["loopback"], st
    succeeds(guests.a, f"ping -6 -c 3 -W 5 {line['c']['loopback']}")


def test_b_reboots_with_the_same_addresses(late: Guests,
                                           line: dict[str, dict[str, Any]]) -> None:
    """While d and the twin boot, b reboots: same identity, /var kept, mesh re-formed."""
    b = late.b
    before = status(b)
    token = secrets.token_hex(16)
    b.ssh(f"mkdir -p /var/lib/kubermesh-test && echo {token} > /var/lib/kubermesh-test/token"
          " && sync")
    machine_id = b.ssh("cat /etc/machine-id").stdout.strip()
    boot_id = b.boot_id()
    b.reboot()  # a clean shutdown, then power on (VM.reboot says why not a warm reset)
    b.wait_ssh()
    assert b.boot_id() != boot_id
    after = wait_status(b, "routes to a and c", routes_all([line["a"], line["c"]]),
                        JOIN_TIMEOUT)
    for key in ("node_id", "hostname", "loopback", "router_id", "identity"):
        assert after[key] == before[key], key
    lo = b.ssh("ip -6 -j addr show dev lo").stdout
    assert before["loopback"] in lo
    assert b.ssh("cat /var/lib/kubermesh-test/token").stdout.strip() == token
    assert b.ssh("cat /etc/machine-id").stdout.strip() == machine_id
    # The mesh re-formed through b: a reaches c again.
    wait_status(late.a, "routes to c again", routes_all([line["c"]]), 300)
    succeeds(late.a, f"ping -6 -c 3 -W 5 {line['c']['loopback']}")


def test_fourth_vm_joins_with_no_action(late: Guests, line: dict[str, dict[str, Any]]) -> None:
    late.mesh.plug(late.c_d)  # into the running c
    vms = [late.a, late.b, late.c, late.d]
    sts = joined(vms)
    loopbacks = [st["loopback"] for st in sts]
    assert len(set(loopbacks)) == 4
    # c took the new cable into OSPFv3 while running: d is its Full neighbour.
    d = sts[3]
    assert any(x["neighbour"] == d["router_id"] and x["state"] == "Full"
               for x in sts[2]["links"]), sts[2]["links"]
    for vm, st in zip(vms, sts, strict=True):
        others = " ".join(x for x in loopbacks if x != st["loopback"])
        succeeds(vm, f"for a in {others}; do ping -6 -c 1 -W 5 $a >/dev/null || exit 1; done")


def test_twins_report_the_conflict(late: Guests, line: dict[str, dict[str, Any]]) -> None:
    twin = late.twin
    twin.wait_ssh()
    mine = wait_status(twin, "an identity", lambda st: bool(st["loopback"]))
    # Same SMBIOS UUID and MAC as a: the same node id, loopback and router-id.
    for key in ("identity", "node_id", "loopback", "router_id"):
        assert mine[key] == line["a"][key], key
    late.mesh.plug(late.d_twin)  # the twin joins the mesh through d
    try:
        for vm in (late.a, twin):
            st = wait_status(vm, "the identity conflict reported",
                             lambda s: any("another node uses router-id" in c
                                           for c in s["conflicts"]), 300)
            assert line["a"]["router_id"] in st["conflicts"][0]
            journal = vm.ssh("journalctl -b -t kubermesh-agent -o json "
                             "--output-fields=KUBERMESH_CONFLICT", check=False).stdout
            assert "KUBERMESH_CONFLICT" in journal
            assert "CONFLICT" in vm.ssh("kubermesh status").stdout
    finally:
        late.mesh.pull(late.d_twin)
        twin.stop()  # a's double: its CPU is better spent on the later tests


# The virtual blink(1) (tests/vm/blink1_device.py) runs in the guest with the image's
# Python (pyroute2) and hid-tools with what it imports, copied from the test host.
GUEST_PYTHON = "/usr/lib/kubermesh/bin/python3"
LIGHT_DIR = "/run/kubermesh-test-light"


def _light(vm: VM) -> dict[str, Any]:
    """What the virtual light shows, and every command it took (its state file)."""
    out = vm.ssh(f"cat {LIGHT_DIR}/state.json", check=False).stdout
    state: dict[str, Any] = json.loads(out) if out.strip() else {}
    return state


def _plug_light(vm: VM) -> None:
    vm.ssh(f"modprobe uhid && systemd-run --unit=kubermesh-test-light --collect "
           f"-E PYTHONPATH={LIGHT_DIR}/lib {GUEST_PYTHON} {LIGHT_DIR}/blink1_device.py "
           f"{LIGHT_DIR}/state.json")


def _monotonic(vm: VM) -> float:
    return float(vm.ssh(f"{GUEST_PYTHON} -c 'import time; print(time.monotonic())'").stdout)


def test_status_light(late: Guests, line: dict[str, dict[str, Any]]) -> None:
    """A blink(1) plugged into d (a virtual one, through the kernel's uhid): it shows
    every stage d passes through, turns red on its own when d's runtime stops, and
    being pulled out changes nothing else."""
    import hidtools
    import parse

    from mesh import light

    def source(module: Any) -> tuple[str, Path]:
        """A module's file, or its package's directory, as it goes under lib/."""
        f = Path(module.__file__)
        return (f"lib/{f.parent.name}", f.parent) if f.name == "__init__.py" \
            else (f"lib/{f.name}", f)

    d = late.d
    d.copy_in({"blink1_device.py": Path(__file__).parent / "blink1_device.py",
               **dict(source(m) for m in (hidtools, parse))}, LIGHT_DIR)
    def shows_the_stage() -> dict[str, Any] | None:
        st = status(d)
        want = list(light.STAGE_COLOURS[st["stage"]][1])
        return st if _light(d).get("colour") == want and st["light"].endswith(
            f"({st['stage']})") else None

    before = wait_status(d, "d in the mesh", lambda st: st["routes_to"] >= 3)
    _plug_light(d)
    try:
        wait_status(d, "the light found", lambda st: st["light"].startswith("blink(1)"), 120)
        before = poll("d's stage on the light", shows_the_stage, 60)
        colour = light.STAGE_COLOURS[before["stage"]][1]
        assert _light(d)["watchdog"]["armed"] and _light(d)["watchdog"]["ms"] == 10000

        # Pull d's only cable and plug it back: each stage d logs shows on the light.
        since = _monotonic(d)
        late.mesh.pull(late.c_d)
        wait_status(d, "d alone", lambda st: st["stage"] == "booting", 120)
        late.mesh.plug(late.c_d)
        again = wait_status(d, "d back in the mesh", lambda st: st["stage"] == before["stage"]
                            and st["routes_to"] >= 3, 300)
        poll("d's stage on the light again",
             lambda: _light(d).get("colour") == list(colour), 30)
        journal = [json.loads(x) for x in d.ssh(
            "journalctl -b -t kubermesh-agent -o json --output-fields=KUBERMESH_STAGE"
        ).stdout.splitlines()]
        stages = [light.STAGE_COLOURS[j["KUBERMESH_STAGE"]][1] for j in journal
                  if "KUBERMESH_STAGE" in j and int(j["__MONOTONIC_TIMESTAMP"]) / 1e6 > since]
        shown = [tuple(x["shows"]) for x in _light(d)["log"]
                 if "shows" in x and x["t"] > since]
        names = [light.COLOUR_NAMES[c] for c in shown]
        assert [c for c, _ in itertools.groupby(stages)] == shown, names
        assert names[0] == "white" and "orange" in names, names  # cable out; carrier back
        assert again["light"].startswith("blink(1)")

        # The runtime stopped: the light's own watchdog turns it red, nobody else.
        pid = unit_state(d, "kubermesh-agent.service")[1]
        d.ssh(f"kill -STOP {pid}")
        try:
            stopped = _monotonic(d)
            poll("the light red", lambda: _light(d).get("colour") == list(light.RED), 60)
            red_after = next(x["t"] for x in reversed(_light(d)["log"])
                             if x.get("why") == "watchdog") - stopped
            assert red_after <= light.WATCHDOG_SECONDS + 1, red_after
        finally:
            d.ssh(f"kill -CONT {pid}")
        poll("d's stage on the light after the runtime resumed",
             lambda: _light(d).get("colour") == list(colour) and not _light(d)["playing"], 60)

        # Pulled out: the status says so, nothing else changes.
        d.ssh("systemctl stop kubermesh-test-light")
        gone = wait_status(d, "the light unplugged",
                           lambda st: "unplugged" in st["light"] or "none" in st["light"], 60)
        assert gone["stage"] == before["stage"], gone
        assert not any("light" in e for e in gone["errors"]), gone["errors"]
        assert unit_state(d, "kubermesh-agent.service")[1] == pid  # not restarted
    finally:
        d.ssh("systemctl stop kubermesh-test-light", check=False)
        d.ssh(f"rm -rf {LIGHT_DIR}", check=False)
