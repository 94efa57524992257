"""IPAM: pod address pools and crash-safe allocation (modes cluster-pool, kubernetes, multi-pool)."""
