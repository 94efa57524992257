"""Connectivity: endpoint wiring (veth), local delivery by BPF redirect, host routes, masquerade."""
