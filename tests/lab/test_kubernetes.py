"""The Kubernetes control plane on the control-plane slot holders: the node runtime
in every node of a real FRR lab, etcd elected by the slots, and kube-apiserver,
kube-controller-manager and kube-scheduler from the binaries the build made from
Debian's source, behind the apiserver's anycast address. kubectl from the same
build talks to it through that address, from a node that holds no slot, with
the site CA verified, and keeps talking when the apiserver it reached dies. A
node without a slot does what a kubelet does to join: the bootstrap token, a
client certificate, a serving certificate the mesh vouches for (and one it does
not, denied)."""

from __future__ import annotations

import base64
import json
import sys
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firstboot.admission import DENY_AFTER
from firstboot.files import write_atomic
from image.kubernetes import CACHE
from image.kubesource import find_built
from lab.netns import Lab
from lab.stack import (
    apiserver_served_by,
    kube_states,
    lowest_router_ids,
    node_address,
    register_ready,
)
from mesh import eviction, kubelet, pki
from mesh.admission import SERVING_SIGNER
from mesh.kubelet import APISERVER_PORT
from mesh.site import Site, load_site, new_site_toml
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


def kubectl(lab: Lab, ref: int, kube_bin: Path, kubeconfig: Path, *args: str,
            check: bool = True) -> str:
    r = lab.exec(ref, [str(kube_bin / "kubectl"), "--kubeconfig", str(kubeconfig),
                       "--request-timeout=5s", *args], timeout=30, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} on n{ref}: {r.stderr.strip()}")
    return r.stdout if r.returncode == 0 else ""


def test_slot_holders_serve_the_apiserver_behind_its_anycast_address_and_admit_kubelets(
        make_lab: LabFactory, kube_bin: Path, tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"
    site_file.write_text(new_site_toml("kube").replace("grace = 300", f"grace = {GRACE}"))
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

    node_conf = kubelet_joins(lab, client, kube_bin, site, tmp_path)
    cluster_ip = kube_proxy_reaches_the_apiserver_service(lab, client, kube_bin, node_conf,
                                                          site)
    service_names_resolve(lab, client, site, cluster_ip)

    # The holder whose apiserver the client reaches dies: the anycast address moves
    # to the next nearest one, which reads and writes the same etcd (once etcd has a
    # leader again: when the dead holder led it, writes fail for its election time).
    nearest = apiserver_served_by(lab, client, anycast, APISERVER_PORT)
    lab.kill(nearest)
    killed = time.monotonic()
    wait_for("another apiserver behind the anycast address, taking a write", lambda: [] if
             kubectl(lab, client, kube_bin, conf, "annotate", "--overwrite", "namespace",
                     "kubermesh-lab", f"kubermesh.test/failover=n{nearest}", check=False)
             else ["no answer"], timeout=60)
    print(f"the anycast apiserver took a write again {time.monotonic() - killed:.1f} s after "
          f"the holder it reached (n{nearest}) died")
    assert apiserver_served_by(lab, client, anycast, APISERVER_PORT) != nearest

    # The node that joined dies: the mesh loses it at once, and so does Kubernetes.
    observer = next(i for i in nodes if i not in holders and i != client and i != nearest)
    node_is_lost_at_once(lab, client, observer, kube_bin, conf, node_conf)


def submit_csr(lab: Lab, ref: int, kube_bin: Path, kubeconfig: Path, name: str, signer: str,
               usages: list[str], cn: str, dns: list[str],
               ips: list[IPv4Address | IPv6Address]) -> ec.EllipticCurvePrivateKey:
    """A CertificateSigningRequest as a kubelet makes it, from node `ref`; its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if dns or ips:
        b = b.add_extension(x509.SubjectAlternativeName(
            [*map(x509.DNSName, dns), *map(x509.IPAddress, ips)]), critical=False)
    pem = b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    body = kubeconfig.with_name(f"{name}.json")
    body.write_text(json.dumps({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": base64.b64encode(pem).decode(), "signerName": signer,
                 "usages": usages}}))
    kubectl(lab, ref, kube_bin, kubeconfig, "create", "-f", str(body))
    return key


def csr_outcome(lab: Lab, ref: int, kube_bin: Path, kubeconfig: Path, name: str) -> list[str]:
    """Still undecided: [what it is]; decided: [] (read it with csr_status)."""
    st = csr_status(lab, ref, kube_bin, kubeconfig, name)
    if st.get("certificate") or any(c["type"] == "Denied" for c in st.get("conditions", [])):
        return []
    return [f"{name}: {st or 'pending'}"]


def csr_status(lab: Lab, ref: int, kube_bin: Path, kubeconfig: Path,
               name: str) -> dict[str, Any]:
    out = kubectl(lab, ref, kube_bin, kubeconfig, "get", "csr", name, "-o", "json",
                  check=False)
    return dict(json.loads(out).get("status", {})) if out else {}


def kubelet_joins(lab: Lab, client: int, kube_bin: Path, site: Site, tmp_path: Path) -> Path:
    """What a kubelet does to join, step by step, from a node without a slot: the
    site's bootstrap token gets it a client certificate (approved and signed by the
    controller-manager through the RBAC the holders put in place); with that, it
    asks for a serving certificate, which the holders approve because the mesh
    knows the addresses it names; one naming another node's address is denied."""
    n = lab.node(client)
    anycast = f"https://[{site.anycast['apiserver']}]:{APISERVER_PORT}"
    ca = base64.b64encode(site.control_plane.ca_certificate.encode()).decode()
    boot = tmp_path / "bootstrap.conf"
    boot.write_text(kubeconfig_text(anycast, ca, {"token": site.secrets.bootstrap_token}))
    boot.chmod(0o600)
    user = f"system:node:{n.hostname}"
    wait_for("the bootstrap token to be accepted", lambda: [] if kubectl(
        lab, client, kube_bin, boot, "auth", "can-i", "create", "certificatesigningrequests",
        check=False).strip() == "yes" else ["not yet"], timeout=60)
    key = submit_csr(lab, client, kube_bin, boot, "node-client", CLIENT_SIGNER,
                     ["digital signature", "key encipherment", "client auth"], user, [], [])
    took = wait_for("the client certificate", lambda: csr_outcome(
        lab, client, kube_bin, boot, "node-client"), timeout=60)
    cert = csr_status(lab, client, kube_bin, boot, "node-client")["certificate"]
    print(f"client certificate through the bootstrap token in {took:.1f} s")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # Where the kubelet keeps it (cert and key in one file), which the node's runtime
    # then uses too (cluster DNS).
    kept = lab.node_dir(n) / "kubelet-state" / "pki" / "kubelet-client-current.pem"
    kept.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(kept, base64.b64decode(cert) + key_pem, 0o600)
    node_conf = tmp_path / "node.conf"
    node_conf.write_text(kubeconfig_text(anycast, ca, {
        "client-certificate-data": cert,
        "client-key-data": base64.b64encode(key_pem).decode()}))
    node_conf.chmod(0o600)
    node_ip = node_address(lab, client)
    assert node_ip is not None
    loopback = IPv6Address(n.loopback)
    serving = ["digital signature", "key encipherment", "server auth"]
    submit_csr(lab, client, kube_bin, node_conf, "node-serving", SERVING_SIGNER, serving,
               user, [n.hostname], [node_ip, loopback])
    took = wait_for("the serving certificate", lambda: csr_outcome(
        lab, client, kube_bin, node_conf, "node-serving"), timeout=60)
    st = csr_status(lab, client, kube_bin, node_conf, "node-serving")
    assert st.get("certificate"), st
    print(f"serving certificate approved by the mesh in {took:.1f} s")
    other = lab.node(next(i.index for i in lab.state.nodes if i.index != client))
    submit_csr(lab, client, kube_bin, node_conf, "node-serving-forged", SERVING_SIGNER,
               serving, user, [n.hostname], [node_ip, IPv6Address(other.loopback)])
    wait_for("the forged serving request denied", lambda: csr_outcome(
        lab, client, kube_bin, node_conf, "node-serving-forged"), timeout=DENY_AFTER + 30)
    st = csr_status(lab, client, kube_bin, node_conf, "node-serving-forged")
    [denied] = [c for c in st["conditions"] if c["type"] == "Denied"]
    assert other.loopback in denied["message"] and not st.get("certificate"), st
    return node_conf


CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"


def kubeconfig_text(server: str, ca_data: str, user: dict[str, str]) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": server,
                                                 "certificate-authority-data": ca_data}}],
        "users": [{"name": "lab", "user": user}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}]})


def node_is_lost_at_once(lab: Lab, victim: int, observer: int, kube_bin: Path, admin: Path,
                         node_conf: Path) -> None:
    """The victim registers as a kubelet would (its Node, Ready) and gets a pod of a
    ReplicaSet; it dies silently. A holder marks its Node unreachable within
    seconds, the pod is evicted after its short toleration, and the ReplicaSet
    makes a new one."""
    name = lab.node(victim).hostname
    register_ready(lab, victim, node_conf, name)
    # And a node that stays: were every Node not Ready, Kubernetes' node lifecycle
    # controller would enter "master disruption mode", lift the taints and evict
    # nothing, as it should when it cannot tell a dead cluster from a cut-off one.
    register_ready(lab, observer, admin, lab.node(observer).hostname)
    rs = node_conf.with_name("rs.json")
    rs.write_text(json.dumps({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "on-the-victim", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "victim"}},
                 "template": {"metadata": {"labels": {"app": "victim"}},
                              "spec": {"nodeName": name, "containers": [{
                                  "name": "c", "image": "kubermesh.local/busybox:1.35",
                                  "command": ["sleep", "3600"]}]}}}}))
    kubectl(lab, observer, kube_bin, admin, "create", "-f", str(rs))

    def pods() -> list[dict[str, Any]]:
        out = kubectl(lab, observer, kube_bin, admin, "get", "pods", "-l", "app=victim",
                      "-o", "json", check=False)
        return list(json.loads(out)["items"]) if out else []

    wait_for("the ReplicaSet's pod", lambda: [] if pods() else ["none yet"], timeout=60)
    [first] = pods()
    tolerations = {t.get("key"): t.get("tolerationSeconds") for t in
                   first["spec"].get("tolerations", [])}
    assert tolerations.get(eviction.UNREACHABLE) == eviction.TOLERATION_SECONDS, tolerations
    lab.kill(victim)
    killed = time.monotonic()

    def node_state() -> list[str]:
        out = kubectl(lab, observer, kube_bin, admin, "get", "node", name, "-o", "json",
                      check=False)
        node = json.loads(out) if out else {}
        ready = [c for c in node.get("status", {}).get("conditions", [])
                 if c["type"] == "Ready"]
        ok = eviction.is_marked(node) and ready and ready[0]["status"] == "Unknown" \
            and ready[0].get("reason") == eviction.REASON
        return [] if ok else [f"{name}: {ready}"]

    marked = wait_for("the dead node marked unreachable", node_state, timeout=30)
    print(f"node {name} marked unreachable {time.monotonic() - killed:.1f} s after it died "
          f"({marked:.1f} s of polling)")
    wait_for("its pod evicted and made again", lambda: [] if any(
        p["metadata"].get("deletionTimestamp") for p in pods()
        if p["metadata"]["uid"] == first["metadata"]["uid"]) and any(
        p["metadata"]["uid"] != first["metadata"]["uid"] for p in pods())
        else [str([(p["metadata"]["name"], p["metadata"].get("deletionTimestamp"))
                   for p in pods()])], timeout=60)
    print(f"its pod evicted and replaced {time.monotonic() - killed:.1f} s after it died "
          f"(Kubernetes' defaults: 40 s + 300 s)")


def kube_proxy_reaches_the_apiserver_service(lab: Lab, client: int, kube_bin: Path,
                                             node_conf: Path, site: Site) -> str:
    """kube-proxy on the joined node, with the command line a node runs it with and
    the node's own credentials: the `kubernetes` service's ClusterIP leads, over the
    overlay, to an apiserver (its certificate names that ClusterIP). Returns it."""
    n = lab.node(client)
    kubelet_dir = node_conf.with_name("kubelet")
    kubelet_dir.mkdir()
    (kubelet_dir / "kubeconfig").symlink_to(node_conf)
    paths = kubelet.KubeletPaths(run_dir=node_conf.parent, kubelet_dir=kubelet_dir,
                                 ca_file=node_conf.parent / "ca.crt",
                                 cni_conf_dir=node_conf.parent)
    node_ip = node_address(lab, client)
    assert node_ip is not None
    lab.spawn(client, [str(kube_bin / "kube-proxy"),
                       *kubelet.kube_proxy_args(site, node_ip, n.hostname, paths)],
              "kube-proxy")
    cluster_ip = str(pki.kubernetes_service_ip(site))
    ca = node_conf.with_name("ca.crt")
    ca.write_text(site.control_plane.ca_certificate)

    def fetch() -> list[str]:
        r = lab.exec(client, [sys.executable, "-c", "import ssl, sys, urllib.request; print("
                              "urllib.request.urlopen(sys.argv[1], timeout=3, context=ssl."
                              "create_default_context(cafile=sys.argv[2])).read().decode())",
                              f"https://{cluster_ip}/readyz", str(ca)], timeout=30, check=False)
        return [] if r.stdout.strip() == "ok" else [r.stderr.strip()[-200:]]

    try:
        took = wait_for(f"the kubernetes service's ClusterIP {cluster_ip} from n{client}",
                        fetch, timeout=60)
    except BaseException:  # what kube-proxy made of it, for the failure's evidence
        for argv in (["iptables-save", "-t", "nat"], ["ip", "route", "get", cluster_ip]):
            print(f"n{client} $ {' '.join(argv)}\n{lab.exec(client, argv, check=False).stdout}")
        raise
    print(f"kube-proxy: the kubernetes service {cluster_ip} answered {took:.1f} s after "
          "kube-proxy started")
    return cluster_ip


def service_names_resolve(lab: Lab, client: int, site: Site, cluster_ip: str) -> None:
    """The node that joined answers its pods' DNS queries at the cluster DNS address:
    the service's name gives its ClusterIP; a name the cluster lacks, NXDOMAIN."""
    def dns_state() -> list[str]:
        st = json.loads(lab.status_file(client).read_text()).get("dns", {})
        return [] if str(st.get("state", "")).startswith("answering") else [str(st)]

    wait_for("the node's cluster DNS", dns_state, timeout=60)
    server = kubelet.cluster_dns(site)

    def ask(name: str) -> tuple[str, list[str]]:
        r = lab.exec(client, [sys.executable, "-c", "import sys; from dnslib import DNSRecord; "
                              "r = DNSRecord.parse(DNSRecord.question(sys.argv[1]).send("
                              "sys.argv[2], 53, timeout=3)); from dnslib import RCODE; "
                              "print(RCODE[r.header.rcode], *[a.rdata for a in r.rr])",
                              name, str(server)], timeout=30)
        rcode, *addrs = r.stdout.split()
        return rcode, addrs

    wait_for("kubernetes.default.svc.cluster.local", lambda: [] if ask(
        "kubernetes.default.svc.cluster.local") == ("NOERROR", [cluster_ip]) else ["not yet"],
        timeout=30)
    assert ask("nothing.default.svc.cluster.local") == ("NXDOMAIN", [])


def test_a_partition_without_etcd_quorum_evicts_nothing(make_lab: LabFactory, kube_bin: Path,
                                                        tmp_path: Path) -> None:
    """One slot holder and a neighbour are cut off from the rest of the mesh. Each
    side loses the other from its SPF tree; only the side with etcd's quorum (two
    of the three members) marks the other side's nodes unreachable. The cut-off
    holder's eviction controller cannot write through its etcd member, so the
    nodes it lost stay as they were."""
    site_file = tmp_path / "site.toml"
    site_file.write_text(new_site_toml("kube").replace("grace = 300", f"grace = {GRACE}"))
    site_file.chmod(0o600)
    site = load_site(site_file)
    lab = make_lab("grid:3x3", site_file=site_file, agent=True, kubernetes=kube_bin)
    topo = lab.state.topology
    nodes = [n.index for n in lab.state.nodes]
    holders = lowest_router_ids(lab, nodes, 3)
    wait_for("the control plane running on the three slot holders", lambda: [
        f"n{i}: {s or 'no status'}" for i, s in kube_states(lab).items()
        if (s == "running") != (i in holders)], timeout=240)
    # The minority: a holder and a neighbour without a slot; the rest stays in one piece.
    minority = next((h, n) for h in holders for n in sorted(topo.distances(h))
                    if topo.distances(h)[n] == 1 and n not in holders
                    and len(topo.without(dead=[h, n]).distances(
                        next(i for i in nodes if i not in (h, n))))
                    == topo.nodes - 2)
    majority = [i for i in nodes if i not in minority]
    watcher = next(i for i in majority if i not in holders)
    conf = tmp_path / "admin.conf"
    conf.write_text(pki.admin_kubeconfig(
        site, f"https://[{site.anycast['apiserver']}]:{APISERVER_PORT}"))
    conf.chmod(0o600)
    wait_for("the apiserver's anycast address to answer kubectl", lambda: [] if kubectl(
        lab, watcher, kube_bin, conf, "get", "--raw", "/readyz", check=False) == "ok"
        else ["not ready"], timeout=60)
    # Nodes on both sides, Ready: what either side could mark unreachable.
    names = {i: lab.node(i).hostname for i in nodes}
    for i in (*majority[:3], minority[1]):
        register_ready(lab, watcher, conf, names[i])

    for a, b in topo.edges:
        if (a in minority) != (b in minority):
            lab.cut(a, b)
    cut = time.monotonic()

    def node(name: str) -> dict[str, Any]:
        out = kubectl(lab, watcher, kube_bin, conf, "get", "node", name, "-o", "json",
                      check=False)
        return json.loads(out) if out else {}

    # The majority (two of etcd's three members) marks the cut-off worker at once...
    took = wait_for("the cut-off worker marked unreachable by the majority",
                    lambda: [] if eviction.is_marked(node(names[minority[1]]))
                    else [names[minority[1]]], timeout=30)
    print(f"\nthe majority marked the cut-off worker unreachable {took:.1f} s after the cut")
    # ...and the cut-off holder, which lost all of the majority's nodes, marks none of
    # them, however long it tries: give it as long again, and more.
    time.sleep(max(0.0, 2 * took + 10 - (time.monotonic() - cut)))
    st = json.loads(lab.status_file(minority[0]).read_text())
    assert st["unreachable"], "the cut-off holder still reaches the majority"
    marked = [names[i] for i in majority[:3] if eviction.is_marked(node(names[i]))]
    assert marked == [], f"the side without quorum marked {marked} unreachable"
    kube = st["control_plane"].get("kubernetes", {})
    assert not kube.get("marked_unreachable"), kube
