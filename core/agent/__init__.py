"""The agent process: plugin host, lifecycle, metrics, logging, systemd notification, `pylium-agent`."""
