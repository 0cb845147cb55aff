# tx_platform — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help setup dev up down status demo test test-unit test-faults lint format bench constraints clean

help: ## List the targets with what they do
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt
	@infra/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(STAMP) ## Install everything: system packages if missing, Python deps, JVM jars (Maven)
	$(BIN)/txp stack setup

dev: setup ## Start the local stack and the Dagster UI on http://127.0.0.1:3000
	$(BIN)/txp dev

up: setup ## Start the local stack (Kafka KRaft + PostgreSQL); harmless when already up
	$(BIN)/txp stack up

down: ## Stop the local stack; no process is left behind
	@if [ -x $(BIN)/txp ]; then $(BIN)/txp stack down; else echo "nothing installed, nothing running"; fi

status: ## Show each service of the local stack with its pid, ports and log
	$(BIN)/txp stack status

demo: setup ## Headless end to end; last line is a JSON summary, non-zero exit on any failed check
	$(BIN)/txp demo

test: setup ## Lint, then every test: unit, integration and end to end against a real stack
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

test-faults: setup ## The whole fault matrix (kill -9, broker outages, Postgres crashes), each ended by an audit
	$(BIN)/pytest -m faults

test-unit: setup ## Run the unit tests only (nothing started)
	$(BIN)/pytest -m unit

bench: up ## Benchmarks against the running stack, each beside its baseline in the same run
	$(BIN)/python bench/bench_commit.py
	$(BIN)/python bench/bench_producer.py
	$(BIN)/python bench/bench_sink.py
	$(BIN)/python bench/bench_dagster.py
	$(BIN)/python bench/bench_e2e.py

lint: setup ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup ## Format the code with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

constraints: ## Re-pin constraints.txt from a fresh resolution of pyproject.toml
	rm -rf .venv-pin && $(PYTHON) -m venv .venv-pin && .venv-pin/bin/pip install --quiet -e '.[dev]'
	(sed -n '1,2p' constraints.txt; .venv-pin/bin/pip freeze --exclude-editable) > constraints.new && mv constraints.new constraints.txt
	rm -rf .venv-pin

clean: ## Stop the stacks and delete their state (also what root keeps outside the checkout), jars, virtualenv
	@if [ -x $(BIN)/txp ]; then \
		$(BIN)/txp stack down --purge --state-dir .txp && $(BIN)/txp stack down --purge --state-dir .txp-test; \
	else echo "nothing installed, nothing running"; fi
	rm -rf .txp .txp-test .cache $(VENV)
