# The README's two commands are `make run` and `make test`; CI runs `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config.toml

.PHONY: run test setup system-packages bench bench-imap bench-startup corpus-check clean

run: setup
	$(BIN)/emergencyd run --config $(CONFIG)

test: system-packages setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

system-packages:
	@sh scripts/install-system-packages

bench: setup system-packages
	$(BIN)/python bench/smtp_ingest.py

bench-imap: setup system-packages
	$(BIN)/python bench/imap_pickup.py

bench-startup: setup
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) var build *.egg-info

corpus-check: setup
	$(BIN)/python scripts/corpus-check
