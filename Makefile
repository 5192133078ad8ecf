# merlot_jax: every target creates and uses the project's own virtual environment (.venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_ENV := JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 TF_CPP_MIN_LOG_LEVEL=2
CONFIG ?= configs/demo.py
WORKDIR ?= workdir/demo

.PHONY: setup test test-fast lint pretrain bench aot clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

test: setup
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder tests

test-fast: setup
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" tests

lint: setup
	$(PY) -m ruff check merlot_jax scripts tests configs

# The built-in CPU run: synthetic corpus -> tokenizer -> preprocessing -> pretraining -> report.
pretrain: setup
	JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/run_demo.py --config $(CONFIG) --workdir $(WORKDIR)

# One CPU device (no fake devices: they would share the same cores), as make pretrain runs.
bench: setup
	JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/benchmark.py train --config configs/tiny.py

aot: setup
	$(PY) scripts/aot_compile.py --config configs/base.py --topology v3-1024 --config.mesh.data=256 --config.mesh.fsdp=4

clean:
	rm -rf $(VENV) .pytest_cache
