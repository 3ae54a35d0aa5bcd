# The two commands a newcomer needs: `make demo` and `make test`. Everything else is a building block.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
HOSTS ?= 5
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: help bootstrap demo test lint unit integration molecule lab-up lab-down lab-status bench constraints clean

help:
	@echo "make demo    - the main job end to end on the local lab"
	@echo "make test    - every test and lint gate"
	@echo "make lab-up HOSTS=N / make lab-down / make lab-status"

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	@$(BIN)/python scripts/demo.py --hosts $(HOSTS)

test: bootstrap lint unit integration molecule

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ansible-lint --offline --profile production -q
	@bash scripts/check-module-docs.sh

unit: bootstrap
	$(BIN)/python -m pytest tests/unit

integration: bootstrap
	$(BIN)/python -m pytest tests/integration

molecule: bootstrap
	@bash scripts/molecule.sh

lab-up: bootstrap
	$(BIN)/python lab/labctl.py up --hosts $(HOSTS)

lab-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python lab/labctl.py down; fi

lab-status:
	$(BIN)/python lab/labctl.py status

bench: bootstrap
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

constraints:
	$(BIN)/pip freeze --exclude-editable > constraints.txt

clean: lab-down
	rm -rf .lab .pytest_cache .ruff_cache
