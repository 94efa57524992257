"""pylium core: the plugin host, lifecycle, configuration, control API and metrics."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the cluster store could not be reached at start
EXIT_CONFIG = 78  # EX_CONFIG: the unit file sets RestartPreventExitStatus=78


def __getattr__(name: str):
    # Looked up lazily: importlib.metadata costs ~40 ms, and pylium-cni starts for every pod.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pylium")
        except PackageNotFoundError:  # a source tree that is not installed
            return "0.0.0+unknown"
    raise AttributeError(name)
