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

# Every bench, then one table of all their figures (bench/ingest needs wrk: apt-get install -y wrk).
bench: services
	$(BIN)/python bench/all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
