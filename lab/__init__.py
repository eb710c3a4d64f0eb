"""The lab: network namespaces cabled by veth pairs, each running real FRR and the
node runtime. Used by `kubermesh lab`, the tests and the benchmarks; nothing a
node runs imports it, and the image does not ship it."""
