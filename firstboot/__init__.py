"""The node agent and what it runs on every boot: identity, links, FRR, status."""
