"""Shared BPF C sources, compiled at run time by bcc (headers, dispatch programs, map ABI)."""
