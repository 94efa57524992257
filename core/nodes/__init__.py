"""The cluster's nodes: this node's record in the cluster store, and its peers'."""
