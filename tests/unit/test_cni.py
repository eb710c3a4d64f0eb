"""The node's CNI network (mesh/cni.py)."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from pathlib import Path

from mesh.cni import BRIDGE, CNI_FILE, cni_config, render_cni

BLOCK = IPv4Network("10.245.7.0/24")
DATA = Path("/var/lib/kubermesh/cni")


def test_bridge_on_the_nodes_block_without_masquerade() -> None:
    conf = cni_config(BLOCK, DATA)
    assert (conf["cniVersion"], conf["name"]) == ("1.0.0", "kubermesh")
    (bridge,) = conf["plugins"]
    assert (bridge["type"], bridge["bridge"], BRIDGE) == ("bridge", "cni0", "cni0")
    assert bridge["isGateway"] is True and bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    assert ipam["type"] == "host-local"
    # The gateway is the node's own address (the block's first); pods get the rest.
    assert ipam["ranges"] == [[{"subnet": "10.245.7.0/24", "gateway": "10.245.7.1",
                                "rangeStart": "10.245.7.2"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}]
    assert ipam["dataDir"] == str(DATA)


def test_rendered_as_json() -> None:
    text = render_cni(BLOCK, DATA)
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert json.loads(text) == cni_config(BLOCK, DATA)
    assert text.splitlines()[1] == '  "cniVersion": "1.0.0",'  # indent 2
    assert CNI_FILE == "10-kubermesh.conflist"
