# The same commands for developers and CI (.ci/run is `make test`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo cluster test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Where `make run` listens, and where it keeps its key, API key and private Redis.
HOST ?= 127.0.0.1
PORT ?= 8000
DEV_ROOT ?= .

## make run: the service on http://$(HOST):$(PORT) (private Redis unless REDIS_URL is set)
# exec: no shell stays between make and the server, so make's SIGTERM reaches it and it stops
# everything it started.
run: $(STAMP)
	exec $(BIN)/feedback-tokens dev --root $(DEV_ROOT) --host $(HOST) --port $(PORT)

## make demo: `make run` plus the widget demo on http://$(HOST):$(PORT)/demo
demo: $(STAMP)
	exec $(BIN)/feedback-tokens dev --root $(DEV_ROOT) --host $(HOST) --port $(PORT) --demo

CLUSTER_PORT ?= 30001

## make cluster: `make run` on a private 3-primary Redis Cluster (ports $(CLUSTER_PORT) and the two after)
cluster: $(STAMP)
	exec $(BIN)/feedback-tokens dev --root $(DEV_ROOT) --host $(HOST) --port $(PORT) --cluster $(CLUSTER_PORT)

## make test: the whole suite, against Redis servers the tests start themselves; first installs
## the Debian packages it needs when missing (listed in tests/system-packages)
# Tests run in TEST_WORKERS processes (pytest-xdist): most of their time is spent waiting on
# servers, so more workers than cores pays. TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= 4

test: $(STAMP)
	tests/install-system-packages
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

## make bench: the benchmark (own Redis and cluster, own servers, wrk, the delivery, ops-cost and server measurements), about 17 minutes; writes
## bench/runs/<UTC time>.md. BENCH_ARGS=--quick: a 2-3 minute smoke run; BENCH_ARGS=--update-results:
## also rewrite the tracked bench/RESULTS.md
bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info

## make lint: ruff on everything, mypy --strict on the package (both pinned in the test extras)
lint: $(STAMP)
	$(BIN)/ruff check app tests bench procs
	$(BIN)/mypy --strict app
