# merlot_jax: every target creates and uses the project's own virtual environment (.venv).
# The venv's Python: PYTHON=/path/to/python if given, else the first Python >= 3.12 among python3.12 on PATH,
# pyenv's installed 3.12.x, python3.13, pyenv's 3.13.x and python3 (the lock is tested on 3.12).
PYENV_ROOT ?= $(HOME)/.pyenv
PYTHON_CANDIDATES := python3.12 $(sort $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python3)) \
  python3.13 $(sort $(wildcard $(PYENV_ROOT)/versions/3.13*/bin/python3)) python3
PYTHON ?= $(firstword $(foreach p,$(PYTHON_CANDIDATES),$(shell $(p) -c 'import sys; sys.exit(sys.version_info < (3, 12))' \
  >/dev/null 2>&1 && echo $(p))))
VENV := .venv
PY := $(VENV)/bin/python
# ACCEL=cpu|tpu|cuda picks the jax backend `setup` installs. cpu (what CI runs) and tpu: ".[dev,tpu]"; the CPU venv
# keeps libtpu, as before, because TPU AOT compiles (make aot, tests/test_aot.py) use its compile-only devices on any
# host. cuda: ".[dev,cuda]" (CUDA 13 wheels pinned by requirements-cuda.lock, no libtpu). Unset, ACCEL stays what the
# venv was set up with (cpu for a new one), so that `make test` after `make setup ACCEL=cuda` keeps the CUDA venv.
ACCEL ?= $(or $(patsubst $(VENV)/.installed-%,%,$(firstword $(wildcard $(VENV)/.installed-*))),cpu)
ifeq ($(filter $(ACCEL),cpu tpu cuda),)
$(error ACCEL=$(ACCEL): use cpu, tpu or cuda)
endif
EXTRAS_cpu := dev,tpu
EXTRAS_tpu := dev,tpu
EXTRAS_cuda := dev,cuda
LOCKS_cpu := requirements.lock
LOCKS_tpu := requirements.lock
LOCKS_cuda := requirements.lock requirements-cuda.lock
# The jax plugins of the other choice, removed when a venv switches ACCEL (pip install never removes a package).
PLUGINS_cpu := jax-cuda13-plugin jax-cuda13-pjrt
PLUGINS_tpu := jax-cuda13-plugin jax-cuda13-pjrt
PLUGINS_cuda := libtpu
STAMP := $(VENV)/.installed-$(ACCEL)
TEST_ENV := JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 TF_CPP_MIN_LOG_LEVEL=2
CONFIG ?= configs/demo.py
WORKDIR ?= workdir/demo

.PHONY: setup test test-fast lint pretrain notebook bench aot device-check clean

setup: $(STAMP)

# One stamp per ACCEL: switching ACCEL (or editing the pins) reinstalls.
$(STAMP): pyproject.toml $(LOCKS_$(ACCEL))
	@test -n "$(PYTHON)" || { echo "make setup: no Python >= 3.12 found (tried $(PYTHON_CANDIDATES))." \
	  "Install one (e.g. 'pyenv install 3.12' or your OS's python3.12) or name it: make setup PYTHON=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip uninstall -qq --yes $(PLUGINS_$(ACCEL))
	$(PY) -m pip install --quiet $(addprefix -c ,$(LOCKS_$(ACCEL))) -e ".[$(EXTRAS_$(ACCEL))]"
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $(STAMP)

test: setup
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

test-fast: setup
	$(TEST_ENV) $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" tests

lint: setup
	$(PY) -m ruff check merlot_jax scripts tests configs

# The built-in CPU run: synthetic corpus -> tokenizer -> preprocessing -> pretraining -> report.
pretrain: setup
	JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/run_demo.py --config $(CONFIG) --workdir $(WORKDIR)

# After `make pretrain`: runs notebooks/quickstart.ipynb on its checkpoint, tokenizer and corpus and saves the
# notebook with its outputs, stderr (library start-up chatter) left out: committed that way, so that the
# project's page shows the results and the plots.
notebook: setup
	@test -d $(WORKDIR)/run || { echo "make notebook: $(WORKDIR)/run is missing: run make pretrain first" >&2; exit 1; }
	MERLOT_CHECKPOINT=$(WORKDIR)/run MERLOT_TOKENIZER=$(WORKDIR)/tokenizer/spm.model MERLOT_CORPUS=$(WORKDIR)/synthetic \
	JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2 $(PY) -c "import nbformat, nbclient; \
	nb = nbformat.read('notebooks/quickstart.ipynb', as_version=4); \
	nbclient.NotebookClient(nb, timeout=900, kernel_name='python3', resources={'metadata': {'path': '.'}}).execute(); \
	[c.update(outputs=[o for o in c.outputs if o.get('name') != 'stderr']) for c in nb.cells if c.cell_type == 'code']; \
	nbformat.write(nb, 'notebooks/quickstart.ipynb')"

# One CPU device (no fake devices: they would share the same cores), as make pretrain runs.
bench: setup
	JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2 $(PY) scripts/benchmark.py train --config configs/tiny.py

aot: setup
	$(PY) scripts/aot_compile.py --config configs/base.py --topology v3-1024 --config.mesh.data=256 --config.mesh.fsdp=4

# The first run on an accelerator, every number in one call (docs/gpu.md, "Running the device check"), written to
# OUT as it goes; CHECK_ARGS adds flags (e.g. --commit=SHA --batch_hints=none=6,full=18). No `setup`: a machine
# without network runs it with its own python3 (JAX + CUDA) and the carried wheels, the venv's Python if there is one.
OUT ?= device_check
CHECK_PY := $(if $(wildcard $(PY)),$(PY),python3)
device-check:
	$(CHECK_PY) scripts/device_check.py --out $(OUT) $(CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
