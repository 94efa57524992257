"""Where shared state lives in the cluster store: Cilium's layout, for the core and plugins."""

NODES = "cilium/state/nodes/v1/"  # <cluster>/<node> -> the node's record (with the agent's lease)
IDENTITIES = "cilium/state/identities/v1/"
IDENTITY_IDS = IDENTITIES + "id/"  # <n> -> the labels of identity n
IDENTITY_VALUES = IDENTITIES + "value/"  # <labels> -> n; <labels>/<node IPv4> -> n (with the lease)
IPS = "cilium/state/ip/v1/default/"  # <ip> -> {IP, HostIP, ID, Key, K8sNamespace, K8sPodName} (with the lease)
