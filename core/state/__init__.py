"""State: the cluster store (what nodes share) and the manifests directory (standalone mode)."""
