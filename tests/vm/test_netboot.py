"""A diskless PC cabled to a running node netboots from it over IPv6, asks to join,
waits for an operator's approval (the site's default policy, manual), gets the
site sealed to its key, and joins the mesh; its root is dm-verity over the very
root the node served. Then the next wave: a second diskless PC netboots from the
first, which serves the image from its memory.

Guests (tests/vm/conftest.py): `netboot` has no disk and one mesh NIC, cabled to
a; b, a member, approves it. `wave` is cabled to `netboot` only. OVMF netboots
them as a PC would: UEFI HTTP boot over IPv6, after a PXEv6 attempt, with Secure
Boot on and only the site's boot certificate enrolled (docs/netboot.md).
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.vm.conftest import Guests, Image
from tests.vm.mesh import nic_with_mac, serve_on, served_whole, wait_status
from tests.vm.qemu import BOOT_TIMEOUT, VM, poll
from tests.vm.test_mesh import JOIN_TIMEOUT, routes_all, succeeds

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module", autouse=True)
def _cores_for_netboot(guests: Guests) -> None:
    """Only a, b and c (the control-plane slot holders: etcd keeps its quorum) run
    beside the diskless PCs, and only once a no longer fights its twin's LSAs.
    Two host cores emulating seven guests starved them all: a's hellos went out
    1.6 s late, its adjacency flapped, and a download stalled past the firmware's
    5 s response timeout. With the twin stopped, a's conflict (the twin's Router-LSAs
    with a's router-id) lasted 140 s more, its a-b adjacency kept flapping and a
    froze for 6 s mid-download. d and the twin served the mesh tests."""
    for vm in (guests.d, guests.twin):
        vm.stop()
    for vm in (guests.a, guests.b):
        vm.wait_ssh()
        wait_status(vm, "settled: no identity conflict, every node routed", lambda st: (
            not st["conflicts"] and st["known_nodes"] > 0
            and st["routes_to"] == st["known_nodes"]), 600)


FIRMWARE_GAVE_UP = "No bootable option or device was found"
JOINED: set[str] = set()  # the diskless guests that joined: the next wave boots from them
NETBOOT_ATTEMPTS = 4  # the first netboot in one run needed 3


def power_on_netboot(vm: VM, attempts: int = NETBOOT_ATTEMPTS) -> tuple[float, int]:
    """Power a diskless PC on until it runs what its neighbour serves, as a person
    would: OVMF tries each boot option once, and a download that stalls past its 5 s
    response timeout ("Server response timeout": the serving TCG guest descheduled
    that long on two busy cores) leaves it at "No bootable option" for good. Then
    it is powered on again, at most `attempts` times in all, each time said on
    stderr. Returns (time.monotonic() of the power-on that booted, attempts used)."""
    for attempt in range(1, attempts + 1):
        vm.start()
        started = time.monotonic()

        def outcome() -> str | None:
            text = vm.console_since_start()
            if FIRMWARE_GAVE_UP in text:
                return "gave up"
            return "booted" if "Linux version" in text and vm._ssh_ready() else None

        if poll(f"{vm.name} to netboot (power-on {attempt})", outcome, BOOT_TIMEOUT,
                every=3.0) == "booted":
            return started, attempt
        tail = "\n".join(vm.console_since_start().splitlines()[-8:])
        print(f"{vm.name}: the firmware gave up at power-on {attempt}:\n{tail}",
              file=sys.stderr)
        vm.stop()
    raise AssertionError(f"{vm.name}: the firmware gave up at all {attempts} power-ons; "
                         f"its console is {vm.console}")


def _journal_seconds(vm: VM, message: str) -> float | None:
    """Seconds from the guest's kernel start to the first journal line with message."""
    out = vm.ssh(f"journalctl -b -o short-monotonic --no-pager -t kubermesh-agent "
                 f"| grep -m1 -F '{message}'", check=False).stdout
    return float(out.split("]")[0].strip("[ ")) if out.startswith("[") else None


def test_a_diskless_pc_netboots_is_approved_and_joins(guests: Guests, image: Image,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    a, b, n = guests.a, guests.b, guests.netboot
    a.wait_ssh()
    b.wait_ssh()
    # a serves on the new cable at once: its neighbour (none yet) is not a member.
    link, offer = serve_on(guests.mesh, guests.a_netboot)
    url = offer["url"]

    booted, power_ons = power_on_netboot(n)
    ssh_at = time.monotonic()
    # It booted the served image: the UKI's root hash, its root on loop devices
    # (the served root, in RAM) under dm-verity, no disk at all.
    cmdline = n.ssh("cat /proc/cmdline").stdout
    assert f"roothash={image.manifest['root_hash']}" in cmdline.split()
    assert "kubermesh.netroot=1" in cmdline.split()
    table = n.ssh("dmsetup table root").stdout
    assert " verity " in table and "7:0" in table and "7:1" in table, table  # loop0, loop1
    assert n.ssh("ls /dev/vd* /dev/sd* 2>/dev/null", check=False).stdout.strip() == ""
    assert _secure_boot(n), "the netbooted node runs without Secure Boot"
    download = served_whole(a, image.manifest["sizes"]["netboot_uki"], 60)
    assert url.startswith("http://[") and url.endswith(":4780/kubermesh.efi")

    # No site yet: it asked a to join and waits; it is no member (no adjacency, no
    # route), and nothing of the site is on it.
    mine = wait_status(n, "a pending join request", lambda st: "waiting for approval" in
                       st.get("join", ""), 300)
    node_id = mine["node_id"]
    assert n.ssh("test -e /run/kubermesh/site.toml", check=False).returncode != 0
    pending = json.loads(succeeds(b, "kubermesh nodes pending --json"))
    assert [(p["id"], p["state"]) for p in pending] == [(node_id, "pending")], pending
    # The operator's check: the key a received is the one n's console shows.
    assert f"key {pending[0]['key']})" in mine["join"], (pending, mine["join"])
    st_a = wait_status(a, "no member on the netboot cable", lambda st: True)
    assert all(x["state"] != "Full" for x in st_a["links"] if x["name"] == link)
    assert n.ssh("ip -6 route show proto ospf", check=False).stdout.strip() == ""
    # Nor does a forward for it: a route by hand through a to b goes nowhere.
    b_loopback = wait_status(b, "an identity", lambda st: bool(st["loopback"]))["loopback"]
    _no_forwarding(a, link, n, nic_with_mac(n, guests.a_netboot.b_nic.mac), b_loopback)

    # An operator approves it from b; it takes the site and joins.
    approved = time.monotonic()
    out = b.ssh(f"kubermesh nodes approve {node_id}").stderr
    assert f"approved {node_id}" in out, out
    others = [wait_status(v, "an identity", lambda st: bool(st["loopback"])) for v in (a, b)]
    joined = wait_status(n, "mesh joined", routes_all(others), JOIN_TIMEOUT)
    took = time.monotonic() - booted
    site = n.ssh("stat -c '%a %U' /run/kubermesh/site.toml").stdout.split()
    assert site == ["600", "root"]
    assert any(x["state"] == "Full" for x in joined["links"])
    succeeds(n, f"ping -6 -c 3 -W 5 {others[1]['loopback']}")
    # a stopped serving on that cable: its neighbour is a member now.
    wait_status(a, f"no more serving on {link}", lambda st: all(
        s["link"] != link for s in st["provision"].get("serving", ())), 120)
    figures = {
        "netboot_power_ons": power_ons,
        "netboot_download_s": round(download["seconds"], 1),
        "netboot_payload_mib": round(download["bytes"] / (1 << 20), 1),
        "netboot_power_on_to_ssh_s": round(ssh_at - booted, 1),
        "netboot_approval_to_joined_s": round(time.monotonic() - approved, 1),
        "netboot_power_on_to_joined_s_with_approval_wait": round(took, 1),
        "netboot_kernel_to_join_request_s": _journal_seconds(n, "asked "),
        "netboot_kernel_to_joined_s": _journal_seconds(n, "mesh joined"),
        "disk_node_a_kernel_to_joined_s": _journal_seconds(a, "mesh joined"),
        "netboot_ram_used_mib": int(n.ssh("free -m | awk '/^Mem:/ {print $3}'").stdout or 0),
    }
    JOINED.add(n.name)
    with capsys.disabled():
        print(f"\nnetboot figures (TCG, this run): {json.dumps(figures)}")


def test_the_next_wave_netboots_from_a_netbooted_node(guests: Guests, image: Image,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """wave netboots from netboot, which has no disk: it serves the image it holds in
    memory (its recipe, root and verity loop devices), bit for bit the signed one,
    as Secure Boot on wave proves; a approves it and it joins."""
    a, n, w = guests.a, guests.netboot, guests.wave
    if n.name not in JOINED:
        pytest.fail(f"{n.name} did not join (test_a_diskless_pc_netboots_is_approved_and_joins "
                    "failed): no netbooted node to boot the next wave from")
    n.wait_ssh()
    serve_on(guests.mesh, guests.netboot_wave)
    booted, power_ons = power_on_netboot(w)
    cmdline = w.ssh("cat /proc/cmdline").stdout.split()
    assert f"roothash={image.manifest['root_hash']}" in cmdline
    assert _secure_boot(w), "the next wave runs without Secure Boot"
    download = served_whole(n, image.manifest["sizes"]["netboot_uki"], 60)

    mine = wait_status(w, "a pending join request", lambda st: "waiting for approval" in
                       st.get("join", ""), 300)
    out = a.ssh(f"kubermesh nodes approve {mine['node_id']}").stderr
    assert f"approved {mine['node_id']}" in out, out
    others = [wait_status(v, "an identity", lambda st: bool(st["loopback"]))
              for v in (a, guests.b, n)]
    wait_status(w, "mesh joined", routes_all(others), JOIN_TIMEOUT)
    succeeds(w, f"ping -6 -c 3 -W 5 {others[0]['loopback']}")
    figures = {
        "wave_power_ons": power_ons,
        "wave_download_from_netbooted_s": round(download["seconds"], 1),
        "wave_power_on_to_joined_s_with_approval_wait": round(time.monotonic() - booted, 1),
        "wave_kernel_to_joined_s": _journal_seconds(w, "mesh joined"),
    }
    with capsys.disabled():
        print(f"\nnetboot wave figures (TCG, this run): {json.dumps(figures)}")


def _secure_boot(vm: VM) -> bool:
    """The firmware's SecureBoot variable says on (its last byte is 1)."""
    out = vm.ssh("od -An -t u1 /sys/firmware/efi/efivars/"
                 "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c", check=False).stdout.split()
    return bool(out) and out[-1] == "1"


def _no_forwarding(router: VM, router_link: str, stranger: VM, stranger_nic: str,
                   target: str) -> None:
    """The stranger routes target through router by hand; router must not forward it."""
    links = json.loads(router.ssh(f"ip -j -6 addr show dev {router_link}").stdout)
    via = next(a["local"] for link in links for a in link.get("addr_info", ())
               if a.get("local", "").startswith("fe80:"))
    # (It can send to the router: its join request reached it.)
    stranger.ssh(f"ip -6 route replace {target}/128 via {via} dev {stranger_nic}")
    try:
        r = stranger.ssh(f"ping -6 -c 3 -W 2 {target}", check=False)
        assert r.returncode != 0, f"{router.name} forwarded a stranger's packets:\n{r.stdout}"
    finally:
        stranger.ssh(f"ip -6 route del {target}/128 via {via} dev {stranger_nic}", check=False)
