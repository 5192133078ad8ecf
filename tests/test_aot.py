"""Ahead-of-time compiles for TPU slices on the CPU host (libtpu's compile-only devices)."""

import dataclasses

import pytest

from merlot_jax import hardware
from merlot_jax.config import validate
from merlot_jax.pretraining.task import PRETRAINING
from merlot_jax.train import aot
from merlot_jax.train.compiled import Cost, Memory
from tests.train.batches import micro_config


@pytest.mark.parametrize('name, topology, devices', [
    ('v3-1024', 'v3:16x32', 1024), ('v4-256', 'v4:4x4x8', 128), ('v5e-256', 'v5e:16x16', 256),
    ('v5litepod-8', 'v5e:2x4', 8), ('v5p-512', 'v5p:4x8x8', 256), ('v4-8', 'v4:2x2x1', 4),
    ('v5e:2x2', 'v5e:2x2', 4)])
def test_slice_names(name, topology, devices):
  t = hardware.parse_topology(name)
  assert t.topology_name == topology
  assert len(aot.topology_devices(t)) == devices


@pytest.mark.parametrize('name', ['v3-1000', 'v6x-8', 'v4:2x2', 'v5p-7'])
def test_bad_slice_names(name):
  with pytest.raises(ValueError, match='--topology'):
    hardware.parse_topology(name)


# |XLA's FLOPs of the unrolled step x devices / the analytic count - 1| allowed. Measured on the config below,
# v5e:2x2 (jax 0.10.2, libtpu 0.0.42.1): 1.126 unrolled, 0.630 scanned; configs/tiny.py 0.97 and 0.98 (v5e:1x1, 2x2),
# configs/base.py on v3-1024 (mesh 256 x 4) 1.028. XLA counts what the analytic matmul/conv count leaves out:
# elementwise work (LayerNorm, GELU, softmax, GroupNorm, AdamW; relatively more in small models) and, on N
# devices, the per-device program's replicated work (unsharded kernels' updates, the global contrastive
# matrix) in each of the N. It skips some of what the analytic count includes: conv taps on SAME padding
# (small maps) and the first conv's input gradient. A wrong component (a layer loop counted once, a missing
# backward, a factor of 2, a per-device count taken as global) moves the ratio by far more than 0.2.
FLOP_TOLERANCE = 0.2


def layer_heavy_config():
  """The micro config with transformer stacks that outweigh its ResNet (4 layers of 128 over 2 segments of 32
  tokens: 60% of the analytic FLOPs), so that XLA counting a scanned stack once shows plainly."""
  config = micro_config(data=2, fsdp=-1)
  m = config.model
  m.num_vision_layers = m.num_joint_layers = m.num_langonly_layers = 4
  m.segment_length, m.hidden_size, m.mlp_dim = 32, 128, 512
  return validate(config)


@pytest.mark.slow
def test_a_v5e_2x2_compile_fits_and_only_the_unrolled_xla_flops_match_the_analytic_count():
  report, compiled = aot.compile_train_step(layer_heavy_config(), PRETRAINING, 'v5e:2x2')
  assert report.num_devices == 4 and report.mesh == {'data': 2, 'fsdp': 2, 'tensor': 1}
  assert 0 < report.total_bytes < report.hbm_bytes == 16 * hardware.GiB
  assert report.memory.argument_bytes > 0 and report.memory.temp_bytes > 0
  assert compiled.memory_analysis().temp_size_in_bytes == report.memory.temp_bytes  # the scanned step's own memory
  # Costs are per device: x 4 devices they match the whole slice's analytic count.
  unrolled = report.unrolled_cost.flops * report.num_devices / report.model_flops_per_step
  scanned = report.compiled_cost.flops * report.num_devices / report.model_flops_per_step
  assert abs(unrolled - 1) <= FLOP_TOLERANCE, unrolled
  assert scanned < 1 - FLOP_TOLERANCE, scanned  # each scanned stack's body counted once, not 4 times
  assert 'MFU' not in report.format()  # no step time was measured, so there is none


def test_compute_and_roofline_bounds_of_the_paper_step_on_v3_1024():
  """configs/base.py on v3-1024 (mesh 256 x 4): XLA's unrolled costs per core as compiled (docs/aot.md)."""
  unrolled = Cost(flops=4.2477e12, bytes_accessed=51.764e9)
  report = aot.Report(hardware.parse_topology('v3-1024'), 1024, {'data': 256, 'fsdp': 4, 'tensor': 1}, 'none', 1024,
                      Memory(1, 1, 1, 1, 1), 4.2327e15, Cost(0.99e12, 20e9), None, 460_000, 790.0, None)
  assert report.compute_bound_seconds == pytest.approx(4.2327e15 / (1024 * 61.5e12))
  assert report.roofline_bound_seconds is None
  assert 'not compiled (--nounrolled_cost)' in report.format() and 'roofline bound  n/a' in report.format()
  report = dataclasses.replace(report, unrolled_cost=unrolled, unrolled_compile_seconds=663.0)
  assert report.roofline_bound_seconds == pytest.approx(51.764e9 / 450e9)  # 900 GB/s per chip, 2 cores: HBM-bound
  assert 'the bytes term' in report.format() and '0.612 days' in report.format()


@pytest.mark.slow
def test_an_oversized_step_fails_with_a_clear_message():
  config = micro_config(fsdp=-1)
  config.model.vocab_size = 2**26  # a 16 GiB float32 token embedding (plus Adam moments) on one v5e chip
  validate(config)
  with pytest.raises(aot.DoesNotFitError, match=r'does not fit in HBM on v5e:1x1 .*remat'):
    aot.compile_train_step(config, PRETRAINING, 'v5e:1x1')
