"""Ahead-of-time compiles for TPU slices on the CPU host (libtpu's compile-only devices)."""

import pytest

from merlot_jax.config import validate
from merlot_jax.train import aot
from tests.train.batches import micro_config


@pytest.mark.parametrize('name, topology, devices', [
    ('v3-1024', 'v3:16x32', 1024), ('v4-256', 'v4:4x4x8', 128), ('v5e-256', 'v5e:16x16', 256),
    ('v5litepod-8', 'v5e:2x4', 8), ('v5p-512', 'v5p:4x8x8', 256), ('v4-8', 'v4:2x2x1', 4),
    ('v5e:2x2', 'v5e:2x2', 4)])
def test_slice_names(name, topology, devices):
  t = aot.parse_topology(name)
  assert t.topology_name == topology
  assert len(aot.topology_devices(t)) == devices


@pytest.mark.parametrize('name', ['v3-1000', 'v6x-8', 'v4:2x2', 'v5p-7'])
def test_bad_slice_names(name):
  with pytest.raises(ValueError, match='--topology'):
    aot.parse_topology(name)


@pytest.mark.slow
def test_micro_config_compiles_for_a_v5e_2x2_and_fits():
  config = micro_config(data=2, fsdp=-1)
  report, compiled = aot.compile_train_step(config, 'v5e:2x2')
  assert report.num_devices == 4 and report.mesh == {'data': 2, 'fsdp': 2, 'tensor': 1}
  assert 0 < report.total_bytes < report.hbm_bytes == 16 * aot.GiB
  assert report.argument_bytes > 0 and report.temp_bytes > 0
  assert report.xla_flops_per_step > 0 and report.model_flops_per_step > 0
  assert 0 < report.mfu <= 1
  assert 'total' in report.format() and 'MFU' in report.format()
  assert compiled.memory_analysis() is not None


@pytest.mark.slow
def test_an_oversized_step_fails_with_a_clear_message():
  config = micro_config(fsdp=-1)
  config.model.vocab_size = 2**26  # a 16 GiB float32 token embedding (plus Adam moments) on one v5e chip
  validate(config)
  with pytest.raises(aot.DoesNotFitError, match=r'does not fit in HBM on v5e:1x1 .*remat'):
    aot.compile_train_step(config, 'v5e:1x1')
