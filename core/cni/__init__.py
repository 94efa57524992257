"""CNI: the `pylium-cni` plugin a container runtime runs (plugin.py, standalone; cni_plugin.c)
and the agent's side of it (routes.py)."""

from pylium.core.cni.plugin import main  # noqa: F401  (the pylium-cni entry point)
