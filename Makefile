# Short targets a newcomer can guess. `make install` first; then `make run`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app wsgi

.PHONY: install run serve migrate test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python  ## Create .venv and install the project with its dev tools
	$(BIN)/python -m pip install --quiet -e '.[dev]'

migrate:  ## Create or upgrade the database schema
	$(FLASK) db upgrade

run: install migrate  ## Run the development server on http://127.0.0.1:5000
	$(FLASK) run

serve: install  ## Serve with gunicorn (migrates on start) on http://127.0.0.1:8000
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: install  ## Run the test suite
	$(BIN)/python -m pytest

lint:  ## Check style and common mistakes
	$(BIN)/ruff check app tests bench wsgi.py gunicorn.conf.py
	$(BIN)/ruff format --check app tests bench wsgi.py gunicorn.conf.py

format:
	$(BIN)/ruff format app tests bench wsgi.py gunicorn.conf.py
	$(BIN)/ruff check --fix app tests bench wsgi.py gunicorn.conf.py

bench: install  ## Run the benchmarks (see bench/README.md)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
