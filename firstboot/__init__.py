"""The programs a Kubermesh node runs: the node agent (identity, links, FRR, status),
the overlay and anycast agents, and the kubelet wiring."""
