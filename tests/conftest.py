"""Test setup: CPU only, 8 fake devices, set before anything imports jax."""

import os
import pathlib
import sys

os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
# Test-only: LLVM's cheapest code generation. The suite's programs run a few steps each, so compiling
# is most of their cost; this cuts compile time by ~35% (init ~60%) for ~40% slower steps. It changes
# code generation, not the program: results agree with the default to float rounding. The trainer
# subprocesses inherit it; the demo test removes it (it measures learning over 200 steps).
TEST_XLA_FLAG = '--xla_backend_optimization_level=0'
if TEST_XLA_FLAG not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' ' + TEST_XLA_FLAG
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Compiles dominate the suite's time on CPU; the persistent cache lets the trainer subprocesses and
# the xdist workers reuse each other's executables (JAX keys entries by program, devices and flags).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path(__file__).resolve().parents[1] / '.pytest_cache' / 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'
sys.path.insert(0, str(REPO))


@pytest.fixture(scope='session')
def golden_dir() -> pathlib.Path:
  """The original TF model's variables, inputs and outputs on a tiny config (tests/golden/README.md)."""
  return TESTS / 'golden' / 'tf_reference_A'


@pytest.fixture(scope='session')
def base_variables_file() -> pathlib.Path:
  """Every variable of the paper's model, as the original TF code creates it (tests/golden/README.md)."""
  return TESTS / 'golden' / 'merlot_base_variables.txt'


@pytest.fixture(scope='session')
def youtube_sample() -> pathlib.Path:
  """A real YouTube video's transcripts, as a path prefix: add '.en.vtt' or '.grover.json' (tests/samples/README.md)."""
  return TESTS / 'samples' / 'youtube_WAaKRUoY6Io' / 'WAaKRUoY6Io'


# The longest test files, longest first: under `pytest -n 2 --dist loadfile` each worker takes the next
# file in collection order, so starting these first keeps either worker from finishing alone on one.
LONG_FIRST = ('test_demo.py', 'test_finetune.py', 'test_step.py', 'test_checkpoint.py', 'test_multihost.py',
              'test_loop.py', 'test_aot.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: file order kept otherwise
