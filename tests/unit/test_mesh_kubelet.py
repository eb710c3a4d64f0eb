"""The kubelet's wiring (mesh/kubelet.py): rendered containerd and kubelet configuration."""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Address
from pathlib import Path
from typing import Any

import pytest
import yaml

from firstboot.paths import NodePaths
from mesh import kubelet
from mesh.site import Site, new_site_toml, parse_site

BLOCK = IPv4Network("10.245.7.0/24")


@pytest.fixture
def site() -> Site:
    return parse_site(tomllib.loads(new_site_toml("warehouse")))


def files(site: Site, tmp_path: Path,
          version: tuple[int, int] = kubelet.NEWEST) -> dict[str, tuple[str, int]]:
    paths = kubelet.KubeletPaths(run_dir=tmp_path / "run", kubelet_dir=tmp_path / "kubelet",
                                 ca_file=tmp_path / "ca.crt",
                                 cni_conf_dir=tmp_path / "run" / "cni" / "net.d")
    return {str(p.relative_to(tmp_path)): v for p, v in
            kubelet.render_all(site, "km-0123456789ab", BLOCK, paths, version).items()}


def args_of(env: str) -> list[str]:
    line = next(x for x in env.splitlines() if x.startswith("KUBELET_ARGS="))
    return shlex.split(shlex.split(line.removeprefix("KUBELET_ARGS="))[0])


@pytest.mark.parametrize(("text", "version"), [
    ("Kubernetes v1.20.2\n", (1, 20)), ("Kubernetes v1.31.2", (1, 31)),
    ("Kubernetes v1.27.0-rc.1", (1, 27))])
def test_kubelet_version_is_read_from_its_output(text: str, version: tuple[int, int]) -> None:
    assert kubelet.kubelet_version(text) == version


def test_a_version_that_is_not_one_is_named() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes version: 'segfault'"):
        kubelet.kubelet_version("segfault\n")


def test_kubelet_120_takes_its_runtime_from_flags(site: Site, tmp_path: Path) -> None:
    out = files(site, tmp_path, (1, 20))
    args = args_of(out["run/kubelet/kubelet.env"][0])
    assert "--container-runtime=remote" in args
    assert "--container-runtime-endpoint=unix:///run/containerd/containerd.sock" in args
    conf = yaml.safe_load(out["run/kubelet/config.yaml"][0])
    assert "containerRuntimeEndpoint" not in conf


def test_kubelet_131_takes_its_runtime_from_its_config(site: Site, tmp_path: Path) -> None:
    out = files(site, tmp_path, (1, 31))
    args = args_of(out["run/kubelet/kubelet.env"][0])
    assert not any(a.startswith("--container-runtime") for a in args)  # 1.27+ rejects it
    conf = yaml.safe_load(out["run/kubelet/config.yaml"][0])
    assert conf["containerRuntimeEndpoint"] == "unix:///run/containerd/containerd.sock"


def test_every_file_is_rendered_with_safe_modes(site: Site, tmp_path: Path) -> None:
    out = files(site, tmp_path)
    assert {name: mode for name, (_, mode) in out.items()} == {
        "run/containerd/config.toml": 0o644,
        "run/kubelet/config.yaml": 0o644,
        "run/kubelet/bootstrap-kubeconfig": 0o600,  # the bootstrap token
        "run/kubelet/kubelet.env": 0o644,
        "run/kubelet/kube-proxy.env": 0o644,
        "kubelet/kubeconfig": 0o600,
        "ca.crt": 0o644,  # the site's cluster CA: public
    }
    assert out["ca.crt"][0] == site.control_plane.ca_certificate


def test_the_nodes_paths_come_from_its_file_contract() -> None:
    from firstboot.kubelet import kubelet_paths
    from tests.unit.fakes import node_config

    node = NodePaths()
    cfg = node_config(Path("/nonexistent"))
    p = kubelet_paths(replace(cfg, paths=node))
    assert p.cni_conf_dir == node.cni_conf_dir == Path("/run/kubermesh/cni/net.d")
    assert p.kubeconfig == Path("/var/lib/kubelet/kubeconfig")
    assert p.client_cert == Path("/var/lib/kubelet/pki/kubelet-client-current.pem")


def test_kubeconfigs_name_the_apiserver_by_its_anycast_address(site: Site,
                                                               tmp_path: Path) -> None:
    out = files(site, tmp_path)
    want = f"https://[{site.anycast['apiserver']}]:6443"
    assert kubelet.apiserver_url(site) == want
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
    # Flexvolume plugins go where the node can write (the root is read-only).
    assert conf["volumePluginDir"].endswith("/volumeplugins")
    assert not conf["volumePluginDir"].startswith("/usr")


def test_node_ip_is_the_nodes_ipv4_address(site: Site, tmp_path: Path) -> None:
    env = files(site, tmp_path)["run/kubelet/kubelet.env"][0]
    line = next(x for x in env.splitlines() if x.startswith("KUBELET_ARGS="))
    args = args_of(env)
    assert "--node-ip=10.245.7.1" in args
    assert "--hostname-override=km-0123456789ab" in args
    assert f"--bootstrap-kubeconfig={tmp_path}/run/kubelet/bootstrap-kubeconfig" in args
    assert [x for x in env.splitlines() if x and not x.startswith("#")] == [line]


def test_containerd_uses_the_nodes_cni_network(site: Site, tmp_path: Path) -> None:
    conf = tomllib.loads(files(site, tmp_path)["run/containerd/config.toml"][0])
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert conf["version"] == 2
    assert cri["sandbox_image"] == kubelet.PAUSE_IMAGE
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": f"{tmp_path}/run/cni/net.d"}
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
