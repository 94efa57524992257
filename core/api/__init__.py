"""The control API: HTTP/JSON on a root-only unix socket (openapi.yaml), the core's routes."""
