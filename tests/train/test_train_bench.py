"""The train benchmark: the analytic-vs-XLA FLOP cross-check (passes on the real model, fails when the count is
off), the GPU peak table, the report, and the largest-batch search."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from merlot_jax import hardware
from merlot_jax.models import flops
from merlot_jax.pretraining.task import PRETRAINING
from merlot_jax.train import bench
from tests.models.testlib import REPO
from tests.script_runner import run_script
from tests.train.batches import micro_config


def _micro_train_flops_per_step() -> float:
  """The micro config's matmul/conv FLOPs per train step by hand (2 per multiply-add; models/resnet.py, vit.py,
  transformer.py): d 64, mlp 128, one layer per stack, 2 segments of 8 tokens in one group, 32x32 frames (a 2x2
  patch grid, pooled to 1x1 for the joint encoder), vocab 512, mask rate 0.2, batch 8; train = 3x forward."""
  layer = lambda t: t * (2 * (4 * 64 * 64 + 2 * 64 * 128) + 2 * 2 * t * 64)  # q/k/v/out, MLP, scores, values
  vit = 2 * (layer(2 + 4) + 2 * 4 * (16 * 64) * 64)  # 2 frames: 2 CLS + 4 patches; the 1024 -> 64 projection
  joint = layer(2 * (1 + 1) + 2 * 8)  # 2 frames (CLS + 1 pooled patch) and 16 tokens
  langonly, lm_head = layer(16), 0.2 * 16 * 2 * 64 * 512
  conv = lambda hw, k, cin, cout: 2 * hw * k * k * cin * cout
  stem = conv(256, 3, 3, 32) + conv(256, 3, 32, 32) + conv(256, 3, 32, 64)  # at 16x16 (stride-2 first conv)
  stage1 = conv(64, 1, 64, 64) + conv(64, 3, 64, 64) + conv(64, 1, 64, 256) + conv(64, 1, 64, 256)  # 8x8
  # stages 2, 3: 1x1 and 3x3 at the input side, avg pool, then the 1x1 expansion and the shortcut at half the side
  stage2 = conv(64, 1, 256, 128) + conv(64, 3, 128, 128) + conv(16, 1, 128, 512) + conv(16, 1, 256, 512)
  stage3 = conv(16, 1, 512, 256) + conv(16, 3, 256, 256) + conv(4, 1, 256, 1024) + conv(4, 1, 512, 1024)
  resnet = 2 * (stem + stage1 + stage2 + stage3)  # 2 frames
  return 8 * 3 * (vit + joint + langonly + lm_head + resnet)  # = 4,082,437,324.8


MICRO_TRAIN_FLOPS_PER_STEP = _micro_train_flops_per_step()


@pytest.fixture(scope='module')
def result():
  """One benchmark of the micro config compiled unrolled (so the timed step is also the FLOP check's)."""
  config = micro_config()
  config.model.scan_layers = False
  return config, bench.run_train_benchmark(config, PRETRAINING, steps=1, peak_tflops=1.0)


def test_flop_cross_check_passes_on_the_real_model(result):
  config, r = result
  assert config.train.global_batch_size == 8
  assert r.model_flops_per_step == pytest.approx(MICRO_TRAIN_FLOPS_PER_STEP, rel=1e-12)
  ratio = bench.check_flops(config, PRETRAINING, r.xla_flops_per_step)
  assert abs(ratio - 1) <= bench.FLOP_TOLERANCE
  assert ratio == pytest.approx(r.xla_flops_per_step / MICRO_TRAIN_FLOPS_PER_STEP, rel=1e-12)


def test_xla_flops_of_a_matmul_sharded_over_every_device_are_2mnk():
  """The XLA side of the cross-check: a [m, k] x [k, n] matmul is 2 m n k FLOPs (one multiply and one add per
  term) in all, though each device's cost analysis sees only its share of the rows."""
  m, k, n = 64, 48, 40
  mesh = Mesh(np.asarray(jax.devices()), ('d',))
  a = jax.ShapeDtypeStruct((m, k), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec('d')))
  b = jax.ShapeDtypeStruct((k, n), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
  assert bench._xla_flops(jax.jit(jnp.matmul).lower(a, b).compile()) == 2 * m * n * k == 245_760


def test_flop_cross_check_raises_with_both_numbers_when_the_analytic_count_is_off(result):
  config, r = result
  halved = dataclasses.replace(PRETRAINING, flops_per_example=lambda c: flops.model_flops_per_example(c) / 2)
  with pytest.raises(bench.FlopCountError) as e:
    bench.check_flops(config, halved, r.xla_flops_per_step)
  message = str(e.value)
  assert f'{MICRO_TRAIN_FLOPS_PER_STEP / 2:.4g}' in message and f'{r.xla_flops_per_step:.4g}' in message
  assert f'ratio {2 * r.xla_flops_per_step / MICRO_TRAIN_FLOPS_PER_STEP:.3f}' in message


def test_report_on_cpu(result):
  config, r = result
  assert r.num_devices == jax.device_count() and r.global_batch_size == config.train.global_batch_size
  assert r.step_seconds > 0 and r.compile_seconds > 0
  assert r.measured_peak_bytes is None and r.compiled_bytes > 0  # the CPU reports no allocator stats
  assert r.peak.flops == 1e12 * jax.device_count()  # MFU: model FLOPs per second over the given peak
  assert r.mfu == pytest.approx(MICRO_TRAIN_FLOPS_PER_STEP / r.step_seconds / (1e12 * jax.device_count()))
  lines = bench.format_report(r).splitlines()
  assert 'GiB compiled (XLA memory analysis); measured: not reported by this device' in lines[-2]
  assert re.fullmatch(r'MFU: \d\.\d{4}', lines[-1])


def test_unrolled_xla_flops_compiles_unrolled_without_remat_or_cudnn_and_sums_devices(monkeypatch):
  seen = []

  class Compiled:
    def cost_analysis(self):
      return {'flops': 10.0, 'bytes accessed': 1.0}

  monkeypatch.setattr(bench, 'compile_step', lambda c, task: (seen.append(c.model), (Compiled(), None, 0.0))[1])
  config = micro_config()
  config.model.remat_policy, config.model.dtype, config.model.attention_impl = 'full', 'bfloat16', 'cudnn'
  assert bench.unrolled_xla_flops(config, PRETRAINING) == 10.0 * jax.device_count()
  m = seen[0]
  assert not m.scan_layers and m.remat_policy == 'none' and m.attention_impl == 'xla' and m.dtype == 'bfloat16'
  assert config.model.scan_layers and config.model.remat_policy == 'full'  # the caller's config is untouched


def test_gpu_peaks_by_device_kind():
  kinds = {'NVIDIA H200': 989, 'NVIDIA H100 80GB HBM3': 989, 'NVIDIA H100 PCIe': 756, 'NVIDIA A100-SXM4-80GB': 312,
           'NVIDIA A100 80GB PCIe': 312, 'NVIDIA L4': 121, 'Tesla V100-SXM2-16GB': 125, 'NVIDIA L40S': None,
           'cpu': None}
  assert {k: hardware.gpu_peak_tflops(k) for k in kinds} == kinds


def test_cpu_peak_is_the_measured_matmul_peak(monkeypatch):
  monkeypatch.setattr(bench, 'matmul_peak', lambda: 2e11)
  peak = bench.device_peak()
  assert peak.flops == 2e11 and 'measured' in peak.source
  assert bench.device_peak(3.0).flops == 3e12 * jax.device_count()


def test_with_batch_scales_by_the_batch_devices():
  config = micro_config()
  assert bench.with_batch(config, 3).train.global_batch_size == 3 * jax.device_count()  # all devices on fsdp
  assert config.train.global_batch_size == 8


def test_benchmark_script_times_a_config_and_refuses_a_missing_command(capsys):
  """scripts/benchmark.py train as `make bench` runs it (shortened: one step, no depth compiles, no FLOP
  check, a given peak)."""
  assert run_script('benchmark.py', 'train', '--config', REPO / 'configs' / 'tiny.py', '--steps=1', '--depths=',
                    '--skip_flop_check', '--peak_tflops=1') == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].endswith(', global batch 8') and re.fullmatch(r'MFU: \d\.\d{4}', lines[-1]), lines
  assert run_script('benchmark.py') == 1 and run_script('benchmark.py', 'both') == 1  # absl: usage, exit 1
  assert 'give one command, data or train' in capsys.readouterr().err
