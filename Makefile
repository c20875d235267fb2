# The two commands a newcomer needs:  make dev  (run it locally)   make test  (run every test)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install dev test lint unit

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	VENV=$(VENV) scripts/bootstrap.sh
	touch $@

dev: install
	$(BIN)/email-service dev

# .pre-commit-config.yaml runs the same steps. Later: `ruff format --check` (it would reformat
# the whole tree today).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy operator/handlers.py  # loaded by path, not as a package (see pyproject.toml)
	$(BIN)/lint-imports

test: install lint
	$(BIN)/pytest

unit: install
	$(BIN)/pytest -m "not slow and not image"

# The benchmark (bench/README.md): about 2.5 minutes on 2 cores; a table, then one JSON line.
.PHONY: bench bench-smoke
bench: install
	scripts/install-bench-tools.sh
	$(BIN)/python -m bench

bench-smoke: install
	$(BIN)/python -m bench --smoke
