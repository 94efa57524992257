# The README documents these first: `make setup`, `make run`, `make test`.
VENV      ?= .venv
PYTEST    ?= $(VENV)/bin/pytest
RUN_ARGS  ?=

.PHONY: setup run test install-service clean docs consts

setup:
	@./scripts/setup.sh

run: setup
	$(VENV)/bin/pylium-agent $(RUN_ARGS)

test: setup
	$(PYTEST) $(PYTEST_ARGS)

# Install the systemd unit and put the agent and CLI on PATH (links into this checkout's venv).
install-service: setup
	ln -sfn $(CURDIR)/$(VENV)/bin/pylium-agent /usr/local/bin/pylium-agent
	ln -sfn $(CURDIR)/$(VENV)/bin/pylium /usr/local/bin/pylium
	ln -sfn $(CURDIR)/$(VENV)/bin/pylium-cni /usr/local/bin/pylium-cni
	install -m 0644 packaging/systemd/pylium-agent.service /etc/systemd/system/pylium-agent.service
	systemctl daemon-reload

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Regenerate the generated blocks of docs/ (a test fails when they are stale).
docs: setup
	$(VENV)/bin/python -m pylium.core.docs .

# Regenerate the Python constants generated from C headers (a test fails when they are stale).
consts: setup
	$(VENV)/bin/python -m pylium.core.datapath.constgen .
