"""The node agent: the programs a Kubermesh node runs (overlay, anycast, kubelet wiring)."""
