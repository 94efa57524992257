"""Endpoints: the workloads (pods, network namespaces) this node serves, and their lifecycle."""
