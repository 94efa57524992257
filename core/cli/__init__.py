"""The `pylium` command-line client of the agent's control API."""
