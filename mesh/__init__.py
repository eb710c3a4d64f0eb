"""Pure mesh library: site file, address plan, pod blocks, topologies, and every
configuration renderer beside its template. No processes, no I/O beyond reading."""
