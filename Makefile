# Two commands a newcomer needs: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export PYTHONUNBUFFERED := 1

.PHONY: run serve bench bench-growth bench-multicore bench-quick fuzz soak test test-quick clean clean-models

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "make: this project needs Python 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>/dev/null || echo 'not installed')." \
	       "Install Python 3.11, then run: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole pipeline on the bundled digits data; extra overrides: make run ARGS="train.epochs=3"
run: $(STAMP)
	$(BIN)/python -m pipeline.run $(ARGS)

# The embedded TF Serving-compatible server on what `make run` pushed (REST :8501, gRPC :8500): every model of the
# registry's models.config, with its labels, re-read each second; a repository without one: MODEL's latest version
# (make serve MODEL=breast_cancer)
REST_PORT ?= 8501
GRPC_PORT ?= 8500
MODEL ?= digits
REPOSITORY ?= $(CURDIR)/model_repository
MODELS = $(if $(wildcard $(REPOSITORY)/models.config),--model_config_file=$(REPOSITORY)/models.config \
	--model_config_file_poll_wait_seconds=1 --allow_version_labels_for_unavailable_models,\
	--model_name=$(MODEL) --model_base_path=$(REPOSITORY)/$(MODEL))
serve: $(STAMP)
	$(BIN)/python -m serving --rest_api_port=$(REST_PORT) --port=$(GRPC_PORT) $(MODELS)

# Serving throughput and latency against the in-process limit and a Flask peer (needs wrk, h2load).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/serving_bench.py --model mid $(ARGS)
	$(BIN)/python benchmarks/serving_bench.py --model digits $(ARGS)

# The ratio and the server's overhead per request for a tiny, a mid and a big model at 1, 8 and 64 rows a request
bench-growth: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/cost_growth_bench.py $(ARGS)

# One server process against --server_processes=2, every core shared, on mid and digits (about 6 minutes)
bench-multicore: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/multicore_bench.py --model mid $(ARGS)
	$(BIN)/python benchmarks/multicore_bench.py --model digits $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/serving_bench.py --model mid --quick --out /tmp/bench-quick $(ARGS)

# 10,000 malformed REST and gRPC requests against a real server (about 1 minute): benchmarks/results/fuzz.*
fuzz: $(STAMP)
	$(BIN)/python benchmarks/fuzz.py $(ARGS)

# The knee rate, then 5 minutes of open-loop load at half of it, with the server's memory sampled (about 7 minutes)
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py $(ARGS)

# Everything, slow integration tests included (this is what CI runs), on two processes: most of the suite
# waits on subprocesses and servers starting. Tests are spread one by one, except those of an xdist group
# (in tests/serving: each module that starts servers, and the two modules sharing the reference server),
# which run together in one worker, so that a shared server starts once.
test: $(STAMP)
	$(BIN)/python -m pytest -ra -n 2 --dist loadgroup $(ARGS)

# The fast subset for the edit-test loop.
test-quick: $(STAMP)
	$(BIN)/python -m pytest -ra -m 'not slow' -n 2 --dist loadgroup $(ARGS)

# Runs and the stage cache only; published models stay (see clean-models).
clean:
	rm -rf runs

# Deletes every published model version under model_repository/: servers polling it lose them.
clean-models:
	rm -rf model_repository
