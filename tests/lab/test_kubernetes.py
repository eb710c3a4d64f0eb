"""The Kubernetes control plane on the control-plane slot holders: the node runtime
in every node of a real FRR lab, etcd elected by the slots, and kube-apiserver,
kube-controller-manager and kube-scheduler from the binaries the build made from
Debian's source, behind the apiserver's anycast address. kubectl from the same
build talks to it through that address, from a node that holds no slot, with
the site CA verified, and keeps talking when the apiserver it reached dies."""

from __future__ import annotations

import json
import sys
import time
from ipaddress import IPv6Address
from pathlib import Path

import pytest
from cryptography import x509

from image.kubernetes import CACHE
from image.kubesource import find_built
from lab.netns import Lab
from lab.stack import lowest_router_ids, slot_views
from mesh import pki
from mesh.kubelet import APISERVER_PORT
from mesh.site import load_site, new_site_toml
from tests.lab.conftest import LabFactory
from tests.lab.test_controlplane import GRACE, wait_for

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def kube_bin() -> Path:
    built = find_built(CACHE)
    if built is None:
        pytest.skip(f"no Kubernetes build in {CACHE} (kube-apiserver, kube-controller-manager, "
                    "kube-scheduler, kubectl): `./dev.sh build` makes one from Debian's source")
    return built.binaries


def kube_states(lab: Lab) -> dict[int, str]:
    return {i: v.get("kubernetes", {}).get("state", "") for i, v in slot_views(lab).items()}


def kubectl(lab: Lab, ref: int, kube_bin: Path, kubeconfig: Path, *args: str,
            check: bool = True) -> str:
    r = lab.exec(ref, [str(kube_bin / "kubectl"), "--kubeconfig", str(kubeconfig),
                       "--request-timeout=5s", *args], timeout=30, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} on n{ref}: {r.stderr.strip()}")
    return r.stdout if r.returncode == 0 else ""


def test_slot_holders_serve_the_apiserver_behind_its_anycast_address(
        make_lab: LabFactory, kube_bin: Path, tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"
    site_file.write_text(new_site_toml("kube").replace("grace = 60", f"grace = {GRACE}"))
    site_file.chmod(0o600)
    site = load_site(site_file)
    lab = make_lab("grid:3x3", site_file=site_file, agent=True, kubernetes=kube_bin)
    nodes = [n.index for n in lab.state.nodes]
    holders = lowest_router_ids(lab, nodes, 3)
    took = wait_for("the control plane running on the three slot holders", lambda: [
        f"n{i}: {s or 'no status'}" for i, s in kube_states(lab).items()
        if (s == "running") != (i in holders)], timeout=240)
    print(f"\ncontrol plane running on the three holders {took:.1f} s after the lab converged")
    assert all(s == "no slot" for i, s in kube_states(lab).items() if i not in holders)
    assert not any((lab.node_dir(lab.node(i)) / "pki").exists()
                   for i in nodes if i not in holders)
    # The holders' keys are root's alone.
    d = lab.node_dir(lab.node(holders[0])) / "pki"
    assert d.stat().st_mode & 0o777 == 0o700
    assert all((d / f).stat().st_mode & 0o777 == 0o600 for f in ("ca.key", "sa.key",
                                                                  "admin.conf"))

    # kubectl on a node without a slot, through the anycast address, verifying the
    # apiserver's certificate against the site's CA (the address is in its SANs).
    client = next(i for i in nodes if i not in holders)
    anycast = site.anycast["apiserver"]
    conf = tmp_path / "admin.conf"
    conf.write_text(pki.admin_kubeconfig(site, f"https://[{anycast}]:{APISERVER_PORT}"))
    conf.chmod(0o600)
    wait_for("the apiserver's anycast address to answer kubectl", lambda: [] if kubectl(
        lab, client, kube_bin, conf, "get", "--raw", "/readyz", check=False) == "ok"
        else ["not ready"], timeout=60)
    kubectl(lab, client, kube_bin, conf, "create", "namespace", "kubermesh-lab")
    names = json.loads(kubectl(lab, client, kube_bin, conf, "get", "namespaces", "-o", "json"))
    assert "kubermesh-lab" in {x["metadata"]["name"] for x in names["items"]}

    # The holder whose apiserver the client reaches dies: the anycast address moves
    # to the next nearest one, which reads the same etcd.
    nearest = served_by(lab, client, anycast)
    lab.kill(nearest)
    killed = time.monotonic()
    wait_for("another apiserver behind the anycast address", lambda: [] if "kubermesh-lab" in
             kubectl(lab, client, kube_bin, conf, "get", "namespace", "kubermesh-lab",
                     "-o", "name", check=False) else ["no answer"], timeout=60)
    print(f"the anycast apiserver answered again {time.monotonic() - killed:.1f} s after "
          f"the holder it reached (n{nearest}) died")
    assert served_by(lab, client, anycast) != nearest


def served_by(lab: Lab, client: int, anycast: IPv6Address) -> int:
    """The node whose apiserver answers `client` at the anycast address: the one
    whose hostname its serving certificate names (a holder, or an heir)."""
    r = lab.exec(client, [sys.executable, "-c", "import ssl, sys; print(ssl.get_server_"
                          f"certificate(('{anycast}', {APISERVER_PORT}), timeout=5))"],
                 timeout=30)
    cert = x509.load_pem_x509_certificate(r.stdout.encode())
    names = set(cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    [holder] = [n.index for n in lab.state.nodes if n.hostname in names]
    return holder
