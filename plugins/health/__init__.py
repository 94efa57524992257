"""The health plugin: every node answers probes and probes every other node."""
