"""The node's CNI network: Debian's bridge + host-local plugins on its pod block."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from mesh import pods

CNI_FILE = "10-kubermesh.conflist"
BRIDGE = "cni0"  # the pod bridge, also known to the packet filter and networkd


def cni_config(block: IPv4Network, data_dir: Path) -> dict[str, Any]:
    """CNI network for the node's block: a bridge whose gateway is the node's own
    address, host-local IPAM from the rest of the block. No masquerade: pod
    addresses are routed across the mesh as they are."""
    gateway = pods.node_address(block)
    return {
        "cniVersion": "1.0.0",
        "name": "kubermesh",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(block), "gateway": str(gateway),
                             "rangeStart": str(gateway + 1)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(data_dir),
            },
        }],
    }


def render_cni(block: IPv4Network, data_dir: Path) -> str:
    """The content of CNI_FILE (JSON)."""
    return json.dumps(cni_config(block, data_dir), indent=2) + "\n"
