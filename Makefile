# The two commands of README's quick start: `make run` and `make test`.
# Both create or reuse .venv, install the project, and make sure Redis and PostgreSQL answer.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check lint typecheck services bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

services: $(STAMP)
	@$(BIN)/python scripts/ensure_services.py

# zapstream reads .env itself and names any missing setting in one line.
run: services
	$(BIN)/zapstream run --host $${HOST:-0.0.0.0} --port $${PORT:-8000}

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: services lint typecheck
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)
	$(BIN)/python scripts/test_on_cluster.py -q $(PYTEST_ARGS)

bench: services
	@command -v wrk >/dev/null || { echo "bench needs wrk: apt-get install -y wrk"; exit 1; }
	$(BIN)/python bench/ingest
	$(BIN)/python bench/process
	$(BIN)/python bench/e2e
	$(BIN)/python bench/replay
	$(BIN)/python bench/follow
	$(BIN)/python bench/scale

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
