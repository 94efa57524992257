"""ctypes mirrors of bpf/connectivity_maps.h."""

from __future__ import annotations

import ctypes as ct

from pylium.core.api_for_plugins import IpcacheKey, MapSpec, libbpf

# This node's pod address blocks: an address in them without an endpoint is unroutable.
LOCAL_BLOCKS = MapSpec("local_blocks", libbpf.MAP_LPM_TRIE, IpcacheKey, ct.c_uint32, 1024, flags=libbpf.F_NO_PREALLOC)



class TunnelConfig(ct.Structure):
    _fields_ = [("ifindex", ct.c_uint32), ("pad", ct.c_uint32)]


# The tunnel device (routingMode tunnel): where packets to pods on other nodes are sent.
TUNNEL_CONFIG = MapSpec("tunnel_config", libbpf.MAP_ARRAY, ct.c_uint32, TunnelConfig, 1)
