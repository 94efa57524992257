"""pylium.testing: what a plugin's tests need, shipped with pylium (a pytest plugin, loaded
automatically wherever pylium is installed).

Fixtures (testing/plugin.py):

- `pylium_stage(plugin, sets=())`: the plugin's BPF stages compiled with the core's
  dispatchers, private pins, attached nowhere: fake an endpoint, run packets through the
  real programs with BPF_PROG_TEST_RUN, read the plugin's maps (`StageHarness`).
- `pylium_lab`: a node (a network namespace with a real agent), pods wired by it, an outside
  namespace; everything removed at teardown (`Lab`).

Modules: `packets` (Ethernet/IPv4/IPv6/TCP/UDP/ICMP/ARP builders), `layout` (C struct layouts
compiled with gcc against their ctypes mirrors), `lab`, `stage`.
"""
