# lumbar-lightning: `make demo` runs the main job on the synthetic phantom, `make test` passes the tests.
# Both create or refresh the virtual environment themselves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install lock test test-full demo reproduce lint format bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

PIP_VERSION := 26.3

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet --progress-bar off --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --progress-bar off --no-deps -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install exactly requirements.lock, then the package (quick when nothing changed)

lock: ## Re-resolve pyproject.toml (with dev and sweep extras) into requirements.lock, hashes included
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet --dry-run --ignore-installed --report .lock-report.json -e '.[dev,sweep]'
	$(BIN)/python tools/lock.py .lock-report.json requirements.lock
	@rm -f .lock-report.json

test: install ## Run the default (fast) test suite
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-full: install ## Run every test, slow ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install ## The demo: phantom (made on first use), 10-fold CV for both raters, report.md, offline W&B
	$(BIN)/lumbar-cv experiment=demo

FOLD ?= 0
RATER ?= A1
reproduce: install ## Re-train demo fold FOLD (rater RATER) and compare with experiments/demo/reference (exit 1 if not reproduced)
	$(BIN)/lumbar-reproduce experiment=demo data.fold=$(FOLD) data.rater=$(RATER) logger=csv

lint: install ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install ## Speed benchmarks (prints ratios, writes bench.json)
	$(BIN)/lumbar-bench

clean: ## Remove run outputs (keeps .venv and data)
	rm -rf logs .pytest_cache
