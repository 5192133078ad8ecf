"""Test setup: CPU only, 8 fake devices, set before anything imports jax."""

import os
import pathlib
import sys

os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Compiles dominate the suite's time on CPU; the persistent cache lets the trainer subprocesses and
# the xdist workers reuse each other's executables (JAX keys entries by program, devices and flags).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path(__file__).resolve().parents[1] / '.pytest_cache' / 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
sys.path.insert(0, str(REPO))


@pytest.fixture(scope='session')
def shared_dir() -> pathlib.Path:
  """../shared beside the checkout (golden TF outputs and sample transcripts)."""
  if not SHARED.is_dir():
    raise FileNotFoundError(f'{SHARED} is missing: the tests need ../shared beside the repository')
  return SHARED


@pytest.fixture(scope='session')
def golden_dir(shared_dir) -> pathlib.Path:
  return shared_dir / 'golden' / 'tf_reference_A'
