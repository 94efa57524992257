"""The BPF toolkit: compile with bcc in a child process, pin, validate, attach, test-run."""
