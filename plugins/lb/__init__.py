"""Load balancing: Kubernetes services in BPF (socket LB, per-packet NAT, NodePort, maglev)."""
