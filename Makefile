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

# integration (lab slots 1 and 2) and molecule (slot 3) run side by side: molecule mostly waits on its hosts.
test: bootstrap lint unit
	@bash scripts/side-by-side.sh integration molecule

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ansible-lint --offline --profile production -q
	$(BIN)/ansible-playbook --syntax-check -i inventories/production awx/configure.yml
	@bash scripts/check-module-docs.sh
	@bash scripts/sanity.sh

# TEST_WORKERS pytest-xdist workers (default 2, one per core of CI); TEST_WORKERS=0 runs in this process.
unit: bootstrap
	$(BIN)/python -m pytest tests/unit -n $${TEST_WORKERS:-2}

# One lab slot per worker, from LAB_TEST_SLOTS (default 1,2; tests/integration/labtools.py). Tests go one by one to
# whichever worker is free, longest modules first; a module with module fixtures stays on one worker (its conftest).
integration: bootstrap
	$(BIN)/python -m pytest tests/integration -n $${TEST_WORKERS:-2} --dist loadgroup --no-loadscope-reorder

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
