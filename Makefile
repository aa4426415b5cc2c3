# Everyday verbs. `make quickstart` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: install quickstart test lint typecheck clean

$(BIN)/coact: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,devices]'
	touch $(BIN)/coact

install: $(BIN)/coact

quickstart: install
	$(BIN)/coact quickstart --data-dir demo-data

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .

typecheck: install
	scripts/typecheck

clean:
	rm -rf demo-data .pytest_cache .ruff_cache
