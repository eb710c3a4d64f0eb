"""The join exchange over real HTTP, in one process: a newcomer's request, a
member's approval (and a forged one refused), the site sealed to the newcomer's
key, and the netboot recipe it will serve its own neighbours."""

from __future__ import annotations

import hashlib
import json
import socket
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from firstboot import netboot
from firstboot.join import Join, JoinConfig
from firstboot.neighbours import request
from firstboot.node import Links
from firstboot.paths import NodePaths
from firstboot.provision import Provision
from mesh import join
from mesh.plan import HardwareIdentity
from mesh.site import new_site_toml, parse_site
from tests.unit.fakes import fake_nic, idle_ospf, node_config


def free_port() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("policy", ["manual", "auto"])
def test_a_newcomer_gets_the_site_once_approved(tmp_path: Path, policy: str) -> None:
    text = new_site_toml("w1").replace('policy = "manual"', f'policy = "{policy}"')
    site = parse_site(tomllib.loads(text))
    member = node_config(tmp_path / "member", site=site)
    member.paths.site.parent.mkdir(parents=True, exist_ok=True)
    member.paths.site.write_text(text)
    links = Links(member)
    prov = Provision(member, links, idle_ospf(member, tmp_path), ipr=None)
    prov.port = free_port()
    # What it serves: a tiny "image" whose recipe a netbooted neighbour takes along.
    (tmp_path / "root").write_bytes(b"R" * 1000)
    whole = b"head" + b"R" * 1000
    recipe = netboot.Recipe(len(whole), hashlib.sha256(whole).hexdigest(),
                            (netboot.Segment("literal", 0, 4), netboot.Segment("root", 0, 1000)),
                            b"head")
    prov.source = (recipe, {"root": tmp_path / "root"})
    prov._http()
    try:
        sysfs = tmp_path / "newcomer" / "sys"
        fake_nic(sysfs, "enp1s0", "52:54:00:00:00:09")
        paths = NodePaths.under(tmp_path / "newcomer", tmp_path / "frr", tmp_path / "nc-site")
        paths = replace(paths, sysfs=sysfs)
        cfg = JoinConfig(HardwareIdentity("mac", "52:54:00:00:00:09"), "0123456789abcdef",
                         ("52:54:00:00:00:09",), paths)
        done: list[bool] = []
        joiner = Join(cfg, Links(cfg), lambda: done.append(True), lambda: {"enp1s0": "::1"},
                      lambda _: None, port=prov.port)
        joiner.links.reconcile()
        joiner.reconcile()
        if policy == "manual":
            assert not done and "waiting for approval" in joiner.state
            held = prov.report()["requests"]
            assert [(r["id"], r["state"]) for r in held] == [("0123456789abcdef", "pending")]
            # Another site's secret (or none) approves nothing.
            code, _ = request("::1", "POST", "/join/0123456789abcdef/approve",
                              {"mac": join.approval_mac("not the key", "0123456789abcdef")},
                              port=prov.port)
            assert code == 403
            code, _ = request("::1", "POST", "/join/0123456789abcdef/approve",
                              {"mac": join.approval_mac(site.secrets.ospf_key,
                                                        "0123456789abcdef")}, port=prov.port)
            assert code == 200
            # Approved for the newcomer's key: a request for the same id with another
            # key (someone else at a served port) is refused, and takes nothing.
            _, other = join.new_key()
            forged = join.JoinRequest("0123456789abcdef", "mac:52:54:00:00:00:66", (), other)
            code, _ = request("::1", "POST", "/join", forged.to_json(), port=prov.port)
            assert code == 409
            joiner.reconcile()
        assert done == [True]
        assert paths.site.read_text() == text
        assert paths.site.stat().st_mode & 0o777 == 0o600
        served = netboot.decode(paths.netboot_recipe.read_bytes())
        assert served.kinds() == {"literal", "root"} and served.sha256 == recipe.sha256
        assert prov.report()["requests"][0]["fetched"]
        # A bad request is refused by field, and the image streams whole.
        code, body = request("::1", "POST", "/join", {"node_id": "x"}, port=prov.port)
        assert code == 400 and b"node_id" in body
        code, body = request("::1", "GET", "/kubermesh.efi", port=prov.port)
        assert code == 200 and body == whole
        assert json.dumps(prov.report()["served"])
    finally:
        prov.close()


def test_nothing_is_served_without_an_image(tmp_path: Path) -> None:
    cfg = node_config(tmp_path)
    prov = Provision(cfg, Links(cfg), idle_ospf(cfg, tmp_path), ipr=None)
    prov.port = free_port()
    try:
        assert prov.reconcile() is False and prov.serving == ()
        assert prov.why_not == f"no {cfg.paths.cmdline}"
        # Its server still answers members (kubermesh nodes): no requests held.
        assert request("::1", "GET", "/join", port=prov.port) == (200, b"[]")
        code, body = request("::1", "GET", "/kubermesh.efi", port=prov.port)
        assert code == 503 and b"no-cmdline" in body
    finally:
        prov.close()


def test_only_a_mesh_links_router_is_asked_and_a_refusal_is_an_error(tmp_path: Path) -> None:
    """The management NIC hears routers too (QEMU's user network answers a solicitation):
    they hold no join request, so a newcomer asks only on its mesh links, and says
    which neighbour refused when none took the request."""
    sysfs = tmp_path / "sys"
    fake_nic(sysfs, "enp1s0", "52:54:00:00:00:09")
    paths = replace(NodePaths.under(tmp_path, tmp_path / "frr", tmp_path / "site"), sysfs=sysfs)
    cfg = JoinConfig(HardwareIdentity("mac", "52:54:00:00:00:09"), "0123456789abcdef",
                     ("52:54:00:00:00:09",), paths, not_mesh=("dummy0",))
    routers = {"dummy0": "::1"}
    solicited: list[str] = []
    joiner = Join(cfg, Links(cfg), lambda: None, lambda: routers, solicited.append,
                  port=free_port())  # nothing listens there
    joiner.links.reconcile()
    joiner.reconcile()
    assert solicited == ["enp1s0"] and not joiner.server
    assert joiner.state == "looking for a serving neighbour on enp1s0"
    routers["enp1s0"] = "::1"
    with pytest.raises(RuntimeError, match=r"join request: ::1: .*refused"):
        joiner.reconcile()
    assert not joiner.server and joiner.state == "no serving neighbour took the join request"
