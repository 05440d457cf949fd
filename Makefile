# Short targets a newcomer can guess: `make` lists them; `make run` sets up and serves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIPELINE_MANAGER := $(BIN)/pipeline-manager
# PORT=5001 serves `make run` (default 5000) or `make serve` (default 8000) on another port.
PORT ?=

.DEFAULT_GOAL := help
.PHONY: help install run serve shell migrate test test-quick test-postgres lint format client bench bench-scale soak clean

# The suites that also run on PostgreSQL (the rest test SQLite, browsers or the docs).
POSTGRES_SUITES := tests/test_pipelines.py tests/test_connectors.py tests/test_resets.py \
	tests/test_reset_status.py tests/test_view_data.py tests/test_delivery.py tests/test_metrics.py \
	tests/test_tenants.py tests/test_api_keys.py tests/test_auth.py tests/test_cli.py \
	tests/test_faults.py tests/test_idempotency.py tests/test_roles.py tests/test_security.py \
	tests/test_compaction.py tests/test_reset_history.py tests/test_connector_pause.py \
	tests/test_table_sink_faults.py tests/test_dispatch.py tests/test_quotas.py \
	tests/test_reset_lifecycle.py tests/test_reset_events.py tests/test_reset_events_served.py \
	tests/test_delta_rows.py tests/test_notifications.py tests/test_delivery_reader.py \
	tests/test_delivery_encoding.py tests/test_fast_status.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installed once, and again only when the project's metadata changes.
INSTALLED := $(VENV)/.installed

$(INSTALLED): pyproject.toml setup.cfg | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

help:  ## List the targets (this list; `make` alone shows it too)
	@echo "make TARGET, in $(CURDIR):"
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-z][a-z-]*:[^#]*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(INSTALLED)  ## Create .venv and install the project with its dev tools (when needed)

migrate:  ## Create or upgrade the database schema (in instance/ unless configured)
	$(PIPELINE_MANAGER) db upgrade

run: install migrate  ## Set up and run the development server on http://127.0.0.1:5000 (PORT=...)
	$(PIPELINE_MANAGER) run $(if $(PORT),--port $(PORT))

serve: install  ## Serve with gunicorn (migrates on start) on http://127.0.0.1:8000 (PORT=...)
	$(if $(PORT),PIPELINE_MANAGER_BIND=127.0.0.1:$(PORT)) $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

shell: install  ## Open a shell with .venv active: pipeline-manager on PATH (exit leaves it)
	@echo "pipeline-manager, pytest and ruff are on PATH in this shell; exit leaves it"
	@VIRTUAL_ENV="$(abspath $(VENV))" PATH="$(abspath $(BIN)):$$PATH" $${SHELL:-/bin/bash}

test: install  ## Run the whole test suite: about 15 minutes on a quiet machine
	@echo "make test: the whole suite, about 15 minutes on a quiet 2-CPU machine; make test-quick leaves out the slow, browser and postgres tests"
	$(BIN)/python -m pytest

test-quick: install  ## Run the tests not marked slow, browser or postgres (pyproject.toml's markers)
	$(BIN)/python -m pytest -m "not slow and not browser and not postgres"

test-postgres: install  ## Run the database-facing suites on PostgreSQL (needs PIPELINE_MANAGER_TEST_POSTGRES_URL)
	@test -n "$$PIPELINE_MANAGER_TEST_POSTGRES_URL" || { echo "set PIPELINE_MANAGER_TEST_POSTGRES_URL (sudo bash .ci/postgres.sh prints one)"; exit 2; }
	PIPELINE_MANAGER_TEST_DATABASE_URL="$$PIPELINE_MANAGER_TEST_POSTGRES_URL" $(BIN)/python -m pytest $(POSTGRES_SUITES)

lint:  ## Check style and common mistakes (ruff)
	$(BIN)/ruff check app tests bench examples wsgi.py gunicorn.conf.py
	$(BIN)/ruff format --check app tests bench examples wsgi.py gunicorn.conf.py

format:  ## Format the code and fix what ruff can (ruff)
	$(BIN)/ruff format app tests bench examples wsgi.py gunicorn.conf.py
	$(BIN)/ruff check --fix app tests bench examples wsgi.py gunicorn.conf.py

# `make client`: the OpenAPI document, then a Python client generated from it (git-ignored).
BUILD ?= build
CLIENT_DIR := $(BUILD)/client

client: install  ## Generate a Python client from the OpenAPI document into build/client (see examples/)
	@mkdir -p $(BUILD)
	PIPELINE_MANAGER_SQLALCHEMY_DATABASE_URI=sqlite:// $(BIN)/pipeline-manager openapi write $(BUILD)/openapi.json
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/openapi-python-client generate --path $(BUILD)/openapi.json \
		--config examples/client-config.yml --fail-on-warning --overwrite --output-path $(CLIENT_DIR)
	@# openapi-python-client (0.29 at least) tells a body sent as one of several content types
	@# apart with isinstance(body, list[...]), which raises TypeError for every call of
	@# push_changes; isinstance(body, list) is what it means.
	@for f in $$(grep -rl 'isinstance(body, list\[' $(CLIENT_DIR)); do \
		sed -e 's/isinstance(body, list\[[A-Za-z0-9_]*\])/isinstance(body, list)/' "$$f" > "$$f.tmp" \
		&& mv "$$f.tmp" "$$f" && echo "patched isinstance(body, list) in $$f"; done

bench: install  ## Run the benchmarks, c under gunicorn (bench/README.md; BENCH_ARGS=--memory adds RSS)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-scale: install  ## Benchmark the served service at 100k connectors, against a small DB (BENCH_ARGS=--database-url ...)
	$(BIN)/python -m bench --scale $(BENCH_ARGS)

soak: install  ## Soak delivery and resets on PostgreSQL under faults, ~6 min (see bench/SOAK.md)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:  ## Remove .venv, caches and build/ (instance/ stays)
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
