# Two commands on a fresh machine: `make run` (the demo) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean bench bench-steps soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gateway demo

lint: $(STAMP)
	$(BIN)/ruff check gateway tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v nginx >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx-light)
	$(BIN)/python bench/run.py

# Builds of this repository's history side by side: what each optimisation changed, in one run.
bench-steps: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/steps.py

# About five minutes of chaos under load (not part of `make test`); SOAK_SECONDS to change it.
soak: $(STAMP)
	$(BIN)/python bench/soak.py
