# qt: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format bench completions docs valkey venv clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)  ## virtualenv with qt and its dev tools

valkey:  ## valkey-server from the OS packages when missing (Debian 12: bookworm-backports)
	@bash scripts/install-valkey.sh || echo "note: valkey-server could not be installed here; qt will say how when it needs one"

lint: venv  ## ruff check + format check + mypy on qt_cli/core ([tool.mypy] in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: venv valkey lint  ## everything CI runs
	$(BIN)/python -m pytest -q

test-slow: venv valkey  ## only the slow fault tests (docs/RELIABILITY.md); make test runs them too
	$(BIN)/python -m pytest -q -m slow

demo: venv valkey  ## the main job on the embedded default: a simulated market through the whole pipeline
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

bench: venv valkey  ## every benchmark (about 9 minutes), written to BENCHMARKS.md with a summary table
	@start=$$(date +%s); for b in benchmarks/bench_*.py; do t=$$(date +%s); echo "== $$b"; \
		$(BIN)/python -m benchmarks.$$(basename $$b .py) || exit 1; \
		echo "== $$b: $$(( $$(date +%s) - t )) s"; done; \
		echo "== make bench: $$(( $$(date +%s) - start )) s"
	@$(BIN)/python -m benchmarks.summary >/dev/null

completions: venv  ## regenerate completions/ (a test fails when they are stale)
	$(BIN)/python -m qt_cli.completions completions

docs: venv completions  ## regenerate docs/cli.md, docs/FEATURES.md and completions/ (tests fail when they are stale)
	$(BIN)/python -m qt_cli.clidoc docs/cli.md
	$(BIN)/python -m qt_cli.core.features.doc docs/FEATURES.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
