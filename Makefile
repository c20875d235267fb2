# The two commands a newcomer needs:  make dev  (run it locally)   make test  (run every test)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test-tools dev test lint unit e2e-kind

# What `make dev` needs and nothing more: a virtualenv with the project, and redis-server.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	VENV=$(VENV) scripts/bootstrap.sh
	touch $@

# What the tests need on top (scripts/install-test-tools.sh): the test extras, buildah and
# debootstrap for the image, helm and kubectl for the chart.
install-test-tools: $(VENV)/.installed-test-tools

$(VENV)/.installed-test-tools: $(VENV)/.installed pyproject.toml scripts/install-test-tools.sh \
		scripts/install-tools.sh
	VENV=$(VENV) scripts/install-test-tools.sh
	touch $@

dev: install
	$(BIN)/email-service dev

# .pre-commit-config.yaml runs the same steps. Later: `ruff format --check` (it would reformat
# the whole tree today).
lint: install-test-tools
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy operator/handlers.py  # loaded by path, not as a package (see pyproject.toml)
	$(BIN)/lint-imports

test: install-test-tools lint
	$(BIN)/pytest

unit: install-test-tools
	$(BIN)/pytest -m "not slow and not image"

# The benchmark (bench/README.md): about 2.5 minutes on 2 cores; a table, then one JSON line.
.PHONY: bench bench-smoke
bench: install
	scripts/install-bench-tools.sh
	$(BIN)/python -m bench

# The benchmark's HTTP client, httpx, is a test extra: `make install` has the runtime only.
bench-smoke: install
	$(BIN)/python -c 'import httpx' 2>/dev/null || $(BIN)/python -m pip install -q httpx
	$(BIN)/python -m bench --smoke

# A real cluster, for machines with Docker and kind (scripts/e2e-kind.sh; --dry-run prints the
# steps): install with the dev values, apply an EmailTemplate, send, find the email in Mailpit.
e2e-kind:
	scripts/e2e-kind.sh $(E2E_ARGS)
