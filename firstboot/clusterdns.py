"""Cluster DNS on every node (mesh.clusterdns says what is answered and why):
once the kubelet holds its client certificate, the node reads services and
endpoints with it (what kube-proxy may read), holds the cluster DNS address on
`lo` and answers its pods' queries there, over UDP."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Any

from firstboot.kubelet import kubelet_paths
from firstboot.node import NodeConfig
from firstboot.runtime import Controller
from mesh import clusterdns, kubelet
from mesh.clusterdns import Records

log = logging.getLogger("kubermesh.clusterdns")

PORT = 53
REQUEST_TIMEOUT = 5


class ClusterDns(Controller):
    name = "cluster-dns"
    after = ("overlay", "kubelet")
    period = 5.0

    def __init__(self, cfg: NodeConfig, ipr: Any) -> None:
        self.cfg, self.ipr = cfg, ipr
        self.address = kubelet.cluster_dns(cfg.site)
        self.records = Records({})
        self.sock: socket.socket | None = None
        self.client: Any = None
        self.state = "waiting for the kubelet's client certificate"

    def reconcile(self) -> bool:
        before = (self.state, len(self.records))
        paths = kubelet_paths(self.cfg)
        if not paths.client_cert.exists() or not paths.kubeconfig.exists():
            self.state = "waiting for the kubelet's client certificate"
            return before != (self.state, len(self.records))
        if self.sock is None:
            self._serve()
        if self.client is None:
            from kubernetes import client, config

            conf = client.Configuration()
            config.load_kube_config(config_file=str(paths.kubeconfig),
                                    client_configuration=conf)
            self.client = client.ApiClient(conf)
        self.records = self._read()
        self.state = f"answering for {len(self.records)} services at {self.address}"
        return before != (self.state, len(self.records))

    def _read(self) -> Records:
        from kubernetes import client

        core = client.CoreV1Api(self.client)
        api = self.client
        services = api.sanitize_for_serialization(core.list_service_for_all_namespaces(
            _request_timeout=REQUEST_TIMEOUT))["items"]
        endpoints = api.sanitize_for_serialization(core.list_endpoints_for_all_namespaces(
            _request_timeout=REQUEST_TIMEOUT))["items"]
        return clusterdns.records(services, endpoints)

    def _serve(self) -> None:
        lo = self.ipr.link_lookup(ifname="lo")[0]
        try:
            self.ipr.addr("add", index=lo, address=str(self.address), prefixlen=32)
        except Exception as e:  # already there: a restarted runtime
            if getattr(e, "code", None) != errno.EEXIST:
                raise
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((str(self.address), PORT))
        self.sock = sock
        threading.Thread(target=self._loop, args=(sock,), name="cluster-dns",
                         daemon=True).start()
        log.info("cluster DNS: answering at %s:%d", self.address, PORT)

    def _loop(self, sock: socket.socket) -> None:
        while True:
            try:
                query, peer = sock.recvfrom(4096)
            except OSError:
                return  # closed
            try:
                sock.sendto(clusterdns.answer(query, self.records), peer)
            except Exception as e:  # a malformed query: dropped, like any resolver
                log.debug("cluster DNS: query from %s: %s", peer[0], e)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            lo = self.ipr.link_lookup(ifname="lo")[0]
            try:
                self.ipr.addr("del", index=lo, address=str(self.address), prefixlen=32)
            except Exception as e:
                log.warning("removing %s from lo: %s", self.address, e)

    def report(self) -> dict[str, Any]:
        return {"state": self.state, "address": str(self.address), "names": len(self.records)}
