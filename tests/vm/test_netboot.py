"""A diskless PC cabled to a running node netboots from it over IPv6, asks to join,
waits for an operator's approval (the site's default policy, manual), gets the
site sealed to its key, and joins the mesh; its root is dm-verity over the very
root the node served.

Guests (tests/vm/conftest.py): `netboot` has no disk and one mesh NIC, cabled to
a; b, a member, approves it. OVMF netboots it as a PC would: UEFI HTTP boot over
IPv6, after a PXEv6 attempt (docs/netboot.md).
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from tests.vm.conftest import Guests, Image
from tests.vm.mesh import nic_with_mac, wait_status
from tests.vm.qemu import VM, poll
from tests.vm.test_mesh import JOIN_TIMEOUT, routes_all, succeeds

pytestmark = pytest.mark.vm


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
    guests.mesh.plug(guests.a_netboot)
    link = nic_with_mac(a, guests.a_netboot.a_nic.mac)
    # a serves on the new cable at once: its neighbour (none yet) is not a member.
    served = wait_status(a, f"netboot served on {link}", lambda st: any(
        s["link"] == link for s in st["provision"].get("serving", ())), 120)
    url = next(s["url"] for s in served["provision"]["serving"] if s["link"] == link)

    n.start()
    booted = time.monotonic()
    n.wait_ssh()
    ssh_at = time.monotonic()
    # It booted the served image: the UKI's root hash, its root on loop devices
    # (the served root, in RAM) under dm-verity, no disk at all.
    cmdline = n.ssh("cat /proc/cmdline").stdout
    assert f"roothash={image.manifest['root_hash']}" in cmdline.split()
    assert "kubermesh.netroot=1" in cmdline.split()
    table = n.ssh("dmsetup table root").stdout
    assert " verity " in table and "7:0" in table and "7:1" in table, table  # loop0, loop1
    assert n.ssh("ls /dev/vd* /dev/sd* 2>/dev/null", check=False).stdout.strip() == ""
    st_a = wait_status(a, "the image served whole", lambda st: any(
        x["path"] == "/kubermesh.efi" and x["done"] for x in st["provision"]["served"]), 60)
    assert url.startswith("http://[") and url.endswith(":4780/kubermesh.efi")
    assert any(x["bytes"] == image.manifest["sizes"]["netboot_uki"]
               for x in st_a["provision"]["served"] if x["done"])

    # No site yet: it asked a to join and waits; it is no member (no adjacency, no
    # route), and nothing of the site is on it.
    mine = wait_status(n, "a pending join request", lambda st: "waiting for approval" in
                       st.get("join", ""), 300)
    node_id = mine["node_id"]
    assert n.ssh("test -e /run/kubermesh/site.toml", check=False).returncode != 0
    pending = json.loads(succeeds(b, "kubermesh nodes pending --json"))
    assert [(p["id"], p["state"]) for p in pending] == [(node_id, "pending")], pending
    st_a = wait_status(a, "no member on the netboot cable", lambda st: True)
    assert all(x["state"] != "Full" for x in st_a["links"] if x["name"] == link)
    assert n.ssh("ip -6 route show proto ospf", check=False).stdout.strip() == ""

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
    download = next(x for x in st_a["provision"]["served"] if x["done"])
    figures = {
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
    with capsys.disabled():
        print(f"\nnetboot figures (TCG, this run): {json.dumps(figures)}")


def test_the_netbooted_node_can_serve_the_same_image(guests: Guests, image: Image) -> None:
    """The next wave: the netbooted node holds the recipe it was given and its root
    and verity (loop devices): it could serve a neighbour the very same file."""
    n = guests.netboot
    recipe = n.ssh("test -s /run/kubermesh/netboot.recipe && echo yes", check=False).stdout
    assert recipe.strip() == "yes"
    fetch = ("/usr/lib/kubermesh/bin/python3 -c 'import hashlib, urllib.request; "
             "print(hashlib.file_digest(urllib.request.urlopen("
             "\"http://[::1]:4780/kubermesh.efi\", timeout=600), \"sha256\").hexdigest())'")
    digest = poll("the netbooted node's copy of the image", lambda: n.ssh(
        fetch, timeout=900, check=False).stdout.strip() or None, 900, every=10)
    nb = image.dir / image.manifest["artifacts"]["netboot_uki"]
    assert digest == hashlib.sha256(nb.read_bytes()).hexdigest()
