"""Observability plugin: Hubble-style flows, monitor stream, Cilium-compatible metrics."""
