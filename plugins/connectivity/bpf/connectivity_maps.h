/* Maps of the connectivity plugin, pinned under <bpf-root>/<node>/connectivity/. Mirrors in
 * ../maps.py. */
#pragma once

/* This node's pod address blocks: an address in them without an endpoint is unroutable. */
BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, __u32, local_blocks, 1024, PYLIUM_PIN "/local_blocks_v1");

/* The tunnel device (routingMode tunnel): where packets to pods on other nodes are sent. */
struct tunnel_config {
    __u32 ifindex; /* the collect-metadata VXLAN device; 0: none (native routing) */
    __u32 pad;
};

/* One entry, written by the agent when it has set the tunnel device up. */
BPF_TABLE_PINNED("array", __u32, struct tunnel_config, tunnel_config, 1, PYLIUM_PIN "/tunnel_config_v1");
