/* Maps of the connectivity plugin, pinned under <bpf-root>/<node>/connectivity/. Mirrors in
 * ../maps.py. */
#pragma once

/* This node's pod address blocks: an address in them without an endpoint is unroutable. */
BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, __u32, local_blocks, 1024, PYLIUM_PIN "/local_blocks_v1");
