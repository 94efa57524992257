"""Built-in pylium plugins, each loaded through the `pylium.plugins` entry-point group."""
