"""Kubelet wiring: rendered containerd/kubelet configuration and the units' ordering."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import tomllib
from ipaddress import IPv4Network, IPv6Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from firstboot import kubelet
from mesh.site import Site, new_site_toml, parse_site

ROOT = Path(__file__).resolve().parent.parent.parent
UNITS = ROOT / "units" / "system"
BLOCK = IPv4Network("10.245.7.0/24")


@pytest.fixture
def site() -> Site:
    return parse_site(tomllib.loads(new_site_toml("warehouse")))


def files(site: Site, tmp_path: Path) -> dict[str, tuple[str, int]]:
    paths = kubelet.Paths(run_dir=tmp_path / "run", kubelet_dir=tmp_path / "kubelet")
    return {str(p.relative_to(tmp_path)): v
            for p, v in kubelet.render_all(site, "km-0123456789ab", BLOCK, paths).items()}


def test_every_file_is_rendered_with_safe_modes(site: Site, tmp_path: Path) -> None:
    out = files(site, tmp_path)
    assert {name: mode for name, (_, mode) in out.items()} == {
        "run/containerd/config.toml": 0o644,
        "run/kubelet/config.yaml": 0o644,
        "run/kubelet/bootstrap-kubeconfig": 0o600,  # the bootstrap token
        "run/kubelet/kubelet.env": 0o644,
        "kubelet/kubeconfig": 0o600,
    }


def test_kubeconfigs_name_the_apiserver_by_its_anycast_address(site: Site,
                                                               tmp_path: Path) -> None:
    out = files(site, tmp_path)
    want = f"https://[{site.anycast['apiserver']}]:6443"
    for name in ("run/kubelet/bootstrap-kubeconfig", "kubelet/kubeconfig"):
        conf: dict[str, Any] = yaml.safe_load(out[name][0])
        assert conf["kind"] == "Config"
        server = conf["clusters"][0]["cluster"]["server"]
        assert server == want
        assert IPv6Address(server.split("[")[1].split("]")[0]) == site.anycast["apiserver"]
        assert conf["current-context"] == "kubelet"
    boot = yaml.safe_load(out["run/kubelet/bootstrap-kubeconfig"][0])
    assert boot["users"][0]["user"] == {"token": site.secrets.bootstrap_token}
    after = yaml.safe_load(out["kubelet/kubeconfig"][0])
    assert after["users"][0]["user"]["client-certificate"].endswith("kubelet-client-current.pem")
    assert site.secrets.bootstrap_token not in out["kubelet/kubeconfig"][0]


def test_kubelet_config(site: Site, tmp_path: Path) -> None:
    conf = yaml.safe_load(files(site, tmp_path)["run/kubelet/config.yaml"][0])
    assert conf["kind"] == "KubeletConfiguration"
    assert conf["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
    assert conf["cgroupDriver"] == "systemd"
    assert conf["podCIDR"] == str(BLOCK)
    assert conf["clusterDNS"] == [str(site.services.range.network_address + 10)]
    assert conf["containerRuntimeEndpoint"] == "unix:///run/containerd/containerd.sock"
    assert conf["authentication"]["anonymous"]["enabled"] is False


def test_node_ip_is_the_nodes_ipv4_address(site: Site, tmp_path: Path) -> None:
    env = files(site, tmp_path)["run/kubelet/kubelet.env"][0]
    line = next(x for x in env.splitlines() if x.startswith("KUBELET_ARGS="))
    args = shlex.split(shlex.split(line.removeprefix("KUBELET_ARGS="))[0])
    assert "--node-ip=10.245.7.1" in args
    assert "--hostname-override=km-0123456789ab" in args
    assert f"--bootstrap-kubeconfig={tmp_path}/run/kubelet/bootstrap-kubeconfig" in args


def test_containerd_uses_the_overlays_cni_network(site: Site, tmp_path: Path) -> None:
    conf = tomllib.loads(files(site, tmp_path)["run/containerd/config.toml"][0])
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert conf["version"] == 2
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": f"{tmp_path}/run/cni/net.d"}
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True


def test_render_command_writes_the_files(site: Site, tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"
    site_file.write_text(new_site_toml("warehouse"))
    state = tmp_path / "overlay.json"
    state.write_text('{"block": "10.244.9.0/24"}\n')
    rc = kubelet.main(["--site", str(site_file), "--hostname", "km-x", "--overlay-state",
                       str(state), "--run-dir", str(tmp_path / "run"), "--kubelet-dir",
                       str(tmp_path / "kubelet")])
    assert rc == 0
    assert "--node-ip=10.244.9.1" in (tmp_path / "run/kubelet/kubelet.env").read_text()
    assert os.stat(tmp_path / "run/kubelet/bootstrap-kubeconfig").st_mode & 0o777 == 0o600
    state.unlink()
    assert kubelet.main(["--site", str(site_file), "--hostname", "km-x", "--overlay-state",
                         str(state), "--run-dir", str(tmp_path / "run")]) == 1


def unit(name: str) -> configparser.RawConfigParser:
    p = configparser.RawConfigParser(strict=False)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(UNITS / name)
    return p


def test_kubelet_unit_waits_for_overlay_and_anycast_and_needs_its_binary() -> None:
    u = unit("kubermesh-kubelet.service")
    binary = u["Service"]["ExecStart"].split()[0]
    assert u["Unit"]["ConditionPathExists"] == binary == "/usr/bin/kubelet"
    after = u["Unit"]["After"].split()
    for dep in ("kubermesh-overlay.service", "kubermesh-anycast.service",
                "kubermesh-apiserver-reachable.service", "kubermesh-kubelet-config.service",
                "containerd.service"):
        assert dep in after
    assert u["Service"]["EnvironmentFile"] == "/run/kubermesh/kubelet/kubelet.env"
    # The config it reads is rendered only once the overlay holds a block.
    cfg = unit("kubermesh-kubelet-config.service")
    assert "kubermesh-overlay.service" in cfg["Unit"]["After"].split()
    assert unit("kubermesh-overlay.service")["Service"]["Type"] == "notify"


def test_every_unit_passes_systemd_analyze_verify() -> None:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze (package systemd) is needed to check the units"
    units = sorted(str(p) for p in UNITS.glob("kubermesh-*.service"))
    r = subprocess.run([tool, "verify", "--man=no", *units], capture_output=True, text=True,
                       check=False, timeout=60)
    # The binaries live in the image, not on the test host.
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if line and "is not executable: No such file or directory" not in line]
    assert problems == []
