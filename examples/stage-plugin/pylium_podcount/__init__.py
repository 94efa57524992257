"""pylium-podcount: packets and bytes per pod, counted by a BPF stage of its own."""
