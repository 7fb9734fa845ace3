# Two commands on a fresh machine: `make run` (the demo; needs no root) and `make test` (the whole
# suite; installs system packages when they are missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The runtime: the dependency tree pinned with hashes in requirements.lock, then this package
# without resolving anything else; the lock holds the build backend too, so building the package
# fetches nothing unhashed. All `make run` needs: no system package, so no root.
RUNTIME := $(VENV)/.runtime
# The test tools on top of it: the test extras, redis-server and chromium (apt-get, as root).
TESTING := $(VENV)/.testing
# The resolver behind `make lock`, pinned so the lock's format does not drift with it.
UV := uv==0.13.9
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu

.PHONY: run test lint lock clean bench bench-steps bench-cluster bench-queue profile soak

$(RUNTIME): requirements.lock pyproject.toml
	$(PYTHON) -m venv --upgrade-deps $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

$(TESTING): $(RUNTIME)
	$(BIN)/pip install --quiet --no-build-isolation -e '.[test]'
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $@

run: $(RUNTIME)
	$(BIN)/gateway demo

lint: $(TESTING)
	$(BIN)/ruff check gateway tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# Regenerate requirements.lock from pyproject.toml's dependencies and build requirements, for
# the image's platform (CPython 3.11, Linux x86_64) whatever machine runs it.
lock:
	test -x $(BIN)/pip || $(PYTHON) -m venv --upgrade-deps $(VENV)
	$(BIN)/pip install --quiet $(UV)
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	| $(BIN)/uv pip compile --quiet --generate-hashes $(LOCK_TARGET) \
	    --custom-compile-command 'make lock' --output-file requirements.lock pyproject.toml -

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

bench: $(TESTING)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v nginx >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx-light)
	$(BIN)/python bench/run.py

# Builds of this repository's history side by side: what each optimisation changed, in one run.
bench-steps: $(TESTING)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v nginx >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx-light)
	$(BIN)/python bench/steps.py

# The same gateway on a 3-master Redis Cluster and on a plain server, in one run.
bench-cluster: $(TESTING)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/cluster.py

# The queues' speed (SPEC 10): batch accept, drain, slot hand-off, memory, the sync hot path.
bench-queue: $(TESTING)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/queues.py

# Where one gateway process spends its CPU at 64 connections (py-spy, from the test extras);
# PROFILE_SECONDS, PROFILE_COMMIT, PROFILE_ENV: see bench/profile.py.
profile: $(TESTING)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v nginx >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx-light)
	$(BIN)/python bench/profile.py

# About five minutes of chaos under load (not part of `make test`); SOAK_SECONDS to change it.
soak: $(TESTING)
	$(BIN)/python bench/soak.py
