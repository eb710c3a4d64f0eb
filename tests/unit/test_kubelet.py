"""The kubelet's side of the node: the controller that writes its configuration
once the node holds a pod block, and the units that order containerd and the
kubelet after the runtime's stages. (The files themselves: test_mesh_kubelet.py.)"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from firstboot import kubelet as kubelet_mod
from firstboot.kubelet import KUBELET_UNIT, PROXY_UNIT, Kubelet, kubelet_paths
from firstboot.overlay import Overlay, Routes
from firstboot.paths import NodePaths
from firstboot.status import KUBELET_NOT_INSTALLED
from mesh import kubelet
from tests.unit.fakes import Kernel, idle_ospf, node_config

ROOT = Path(__file__).resolve().parent.parent.parent
UNITS = ROOT / "units" / "system"
PRESETS = ROOT / "units" / "system-preset"
BLOCK = IPv4Network("10.245.7.0/24")


def controller(tmp_path: Path) -> tuple[Kubelet, Overlay]:
    cfg = node_config(tmp_path)
    kernel = Kernel()
    ov = Overlay(cfg, kernel, Routes(cfg, kernel), idle_ospf(cfg, tmp_path), lambda _: None)
    return Kubelet(cfg, ov), ov


def test_nothing_is_written_before_the_node_holds_a_block(tmp_path: Path) -> None:
    k, _ = controller(tmp_path)
    assert k.reconcile() is False
    assert k.state == KUBELET_NOT_INSTALLED and k.written == {}
    assert not (tmp_path / "state" / "kubelet").exists()


def test_the_configuration_follows_the_block(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    k, ov = controller(tmp_path)
    ov.block = BLOCK
    k.reconcile()
    cfg = k.cfg
    want = kubelet.render_all(cfg.site, cfg.node.hostname, BLOCK, kubelet_paths(cfg))
    assert set(k.written) == set(want)
    for path, (text, mode) in want.items():
        assert path.read_text() == text and path.stat().st_mode & 0o777 == mode
        assert path.is_relative_to(tmp_path)  # a lab node writes nothing outside its state
    env = cfg.paths.run_dir / "kubelet" / "kubelet.env"
    assert "--node-ip=10.245.7.1" in env.read_text()
    writes: list[Path] = []
    monkeypatch.setattr(kubelet_mod, "write_atomic", lambda p, *a, **kw: writes.append(p))
    k.reconcile()
    assert writes == []  # unchanged: not written again
    ov.block = IPv4Network("10.245.8.0/24")  # yielded to a lower router-id
    k.reconcile()
    assert env in writes


@pytest.mark.parametrize(("prints", "flags"), [
    ("Kubernetes v1.20.2", True), ("Kubernetes v1.31.2", False), ("oops", False)])
def test_the_installed_kubelets_version_shapes_its_files(
        tmp_path: Path, prints: str, flags: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    k, ov = controller(tmp_path)
    monkeypatch.setattr(Kubelet, "_unit_state", lambda self: "inactive")  # no host systemd
    binary = k.cfg.paths.kubelet_binary
    binary.parent.mkdir(parents=True)
    binary.write_text(f"#!/bin/sh\necho '{prints}'\n")
    binary.chmod(0o755)
    ov.block = BLOCK
    k.reconcile()
    env = (k.cfg.paths.run_dir / "kubelet" / "kubelet.env").read_text()
    assert ("--container-runtime=remote" in env) is flags
    assert k.version == ((1, 20) if flags else kubelet.NEWEST)


def test_the_kubelet_units_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k, _ = controller(tmp_path)
    calls: list[list[str]] = []
    state = ["activating\n"]

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 3, state[0], "")

    monkeypatch.setattr(subprocess, "run", run)
    assert k.reconcile() is False and calls == []  # no kubelet binary: not asked
    k.cfg.paths.kubelet_binary.parent.mkdir(parents=True)
    k.cfg.paths.kubelet_binary.touch()
    assert k.reconcile() is True and k.state == "activating"
    assert calls == [["systemctl", "is-active", KUBELET_UNIT]]
    assert k.reconcile() is False
    state[0] = "active\n"
    assert k.reconcile() is True and k.state == "active"
    state[0] = ""
    assert k.reconcile() is True and k.state == "unknown"


def test_the_node_paths_meet_the_units() -> None:
    """The runtime writes where the units read."""
    paths = NodePaths()
    kp = kubelet_paths(node_config(Path("/nonexistent"), paths={
        "run_dir": paths.run_dir, "kubelet_dir": paths.kubelet_dir, "ca_file": paths.ca_file}))
    assert kp.cni_conf_dir == paths.cni_conf_dir  # the overlay writes, containerd reads
    env = unit("kubermesh-kubelet.service")["Service"]["EnvironmentFile"]
    assert Path(env) == kp.run_dir / "kubelet" / "kubelet.env"
    dropin = (UNITS / "containerd.service.d" / "kubermesh-config.conf").read_text()
    assert f"c={kp.run_dir / 'containerd' / 'config.toml'};" in dropin
    assert unit("kubermesh-kubelet.service")["Unit"]["ConditionPathExists"] == str(
        paths.kubelet_binary)


def unit(name: str) -> configparser.RawConfigParser:
    p = configparser.RawConfigParser(strict=False)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    assert p.read(UNITS / name), name
    return p


def test_kubelet_unit_waits_for_its_files_and_images_and_needs_its_binary() -> None:
    u = unit("kubermesh-kubelet.service")
    binary = u["Service"]["ExecStart"].split()[0]
    assert u["Unit"]["ConditionPathExists"] == binary == "/usr/bin/kubelet"
    assert "kubermesh-wait-overlay.service" in u["Unit"]["Requires"].split()
    assert {"containerd.service", "kubermesh-images.service"} <= set(
        u["Unit"]["Wants"].split())
    assert {"containerd.service", "kubermesh-wait-overlay.service",
            "kubermesh-images.service"} <= set(u["Unit"]["After"].split())
    # Started by the runtime, once the apiserver is reachable: not at boot.
    assert "Install" not in u
    assert KUBELET_UNIT not in (PRESETS / "80-kubermesh.preset").read_text()
    w = unit("kubermesh-wait-overlay.service")
    assert w["Service"]["Type"] == "oneshot"
    assert "wait --stage overlay" in w["Service"]["ExecStart"]
    assert "kubermesh-agent.service" in w["Unit"]["After"].split()
    images = unit("kubermesh-images.service")
    assert images["Unit"]["After"] == images["Unit"]["Wants"] == "containerd.service"
    assert "ctr --namespace k8s.io images import" in images["Service"]["ExecStart"]
    dropin = configparser.RawConfigParser(strict=False)
    dropin.read(UNITS / "containerd.service.d" / "kubermesh-config.conf")
    assert "kubermesh-wait-overlay.service" in dropin["Unit"]["After"].split()


def test_the_agent_unit_is_a_notify_service_that_stops_on_bad_input() -> None:
    u = unit("kubermesh-agent.service")["Service"]
    assert u["Type"] == "notify" and u["ExecStart"] == "/usr/bin/kubermesh agent"
    assert u["RestartPreventExitStatus"] == "78"  # agent.EX_CONFIG
    assert "WatchdogSec" in u and u["Restart"] == "always"


def test_every_installable_unit_is_enabled_by_the_preset() -> None:
    enabled = {line.split()[1] for p in PRESETS.glob("*.preset")
               for line in p.read_text().splitlines() if line.startswith("enable ")}
    shipped = {p.name for p in UNITS.iterdir() if p.is_file()}
    installable = {n for n in shipped if "[Install]" in (UNITS / n).read_text()}
    assert installable <= enabled
    ours = {n for n in enabled if n.startswith("kubermesh-")}
    assert ours <= shipped  # no preset line for a unit that is gone


def test_every_unit_passes_systemd_analyze_verify() -> None:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze (package systemd) is needed to check the units"
    units = sorted(str(p) for p in UNITS.iterdir() if p.suffix in (".service", ".mount"))
    assert len(units) >= 7
    r = subprocess.run([tool, "verify", "--man=no", *units], capture_output=True, text=True,
                       check=False, timeout=60)
    # The binaries live in the image, not on the test host.
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if line and "is not executable: No such file or directory" not in line]
    assert problems == []


def test_the_kubelet_starts_once_its_files_are_written_and_the_apiserver_is_reachable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = node_config(tmp_path)
    kernel = Kernel()
    ov = Overlay(cfg, kernel, Routes(cfg, kernel), idle_ospf(cfg, tmp_path), lambda _: None)
    reachable = [False]
    k = Kubelet(cfg, ov, lambda: reachable[0])
    cfg.paths.kubelet_binary.parent.mkdir(parents=True)
    cfg.paths.kubelet_binary.touch()
    calls: list[list[str]] = []
    state = ["inactive\n"]

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if cmd[1] == "start":
            state[0] = "activating\n"
        return subprocess.CompletedProcess(cmd, 0, state[0], "")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(Kubelet, "kubelet_version", lambda self: kubelet.NEWEST)
    start = ["systemctl", "start", "--no-block", KUBELET_UNIT, PROXY_UNIT]
    reachable[0] = True
    k.reconcile()  # no block, no files: not started, whatever the apiserver
    assert start not in calls and k.state == "inactive"
    reachable[0] = False
    ov.block = BLOCK
    k.reconcile()  # files written, no apiserver yet
    assert start not in calls and k.state == "inactive"
    reachable[0] = True
    assert k.reconcile() is True and k.state == "activating"
    assert calls.count(start) == 1
    k.reconcile()  # running: left alone
    assert calls.count(start) == 1
