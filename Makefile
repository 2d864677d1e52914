# The two README commands: `make run` (set up, build and serve the default index) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup run test dev lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The local CPU build of torch; any other torch spec pulls GBs of CUDA packages.
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(TORCH_PIN)
	touch $(STAMP)

setup: $(STAMP)
	mkdir -p $(DAGSTER_HOME)

run: setup
	$(BIN)/embedding-assets run

test: setup
	$(BIN)/python -m pytest

dev: setup
	$(BIN)/dagster dev

lint: setup
	$(BIN)/ruff check embedding_assets embedding_assets_tests

clean:
	rm -rf data/lancedb data/serving data/scratch data/models .dagster_home
