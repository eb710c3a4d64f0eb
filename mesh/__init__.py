"""Pure mesh library: site file, address plan, config renderers, and the lab."""
