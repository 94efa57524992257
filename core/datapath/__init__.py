"""The datapath toolkit: BPF compilation, pinned maps, dispatchers and slots, the ipcache."""
