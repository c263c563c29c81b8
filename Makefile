# The two commands: `make run` serves, `make test` checks. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format train clean help

help:
	@echo "make run    - train a champion if needed, start Redis + Ray Serve, print the URLs"
	@echo "make test   - lint, type-check and run the whole test suite"
	@echo "make lint   - ruff (lint + format check) and mypy"
	@echo "make train  - train on the default generated data and register a champion"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m serve_app.run

train: $(STAMP)
	$(PY) -m train

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy serve_app train tune loadtest

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
