"""Input pipeline throughput, against bare JPEG decode + resize of the same frames and against a TPU host.

All runs share the process, the cores and the number of parallel calls. Two baselines decode the same
JPEGs to the pipeline's output size: 'decode' resizes with the pipeline's own method mix (like for like:
the least work any pipeline with the original's augmentation has to do per frame), 'decode-bilinear' with
one bilinear resize (the previous baseline). The pipeline's frames per second per core then give the host
cores one TPU host needs to keep its chips busy at the train step's FLOP count.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np

from merlot_jax.config import default_config
from merlot_jax.data import pipeline
from merlot_jax.data.record_format import make_example, write_tfrecord
from merlot_jax.extras import import_extra
from merlot_jax.hardware import parse_topology
from merlot_jax.models.flops import model_flops_per_example

tf = import_extra('tensorflow', 'data')

# The original's training resize methods, in the order of frames.random_geometry's method index (one of
# the 4 with probability 1/4 each, align_corners=True); frames.py crops the nearest-neighbour resize by
# gathers, the baseline runs the whole TF kernel.
RESIZE_METHODS = ('bilinear', 'nearest', 'bicubic', 'area')
_RESIZE_OPS = (tf.raw_ops.ResizeBilinear, tf.raw_ops.ResizeNearestNeighbor, tf.raw_ops.ResizeBicubic,
               tf.raw_ops.ResizeArea)

# vCPUs of the one host VM of each single-host slice. v5e-8: ct5lp-hightpu-8t, 224 vCPUs
# (https://docs.cloud.google.com/tpu/docs/v5e, "VM types"; multi-host v5e slices use 4-chip
# ct5lp-hightpu-4t hosts with 112, the same 28 per chip). v5p-8: ct5p-hightpu-4t, 208 vCPUs, half of them
# on each NUMA node (https://docs.cloud.google.com/tpu/docs/v5p-training, "VM, host and slice properties").
# v4-8: ct4p-hightpu-4t, 240 vCPUs; v3-8: 96 vCPUs (the stored copies of https://cloud.google.com/tpu/docs/v4
# and /v3 give no host table; both counts are from third-party machine-type tables, 240 / 408 GB and
# 96 / 340 GB).
HOST_VCPUS = {'v3-8': 96, 'v4-8': 240, 'v5e-8': 224, 'v5p-8': 208}
GOAL_FRACTION = 0.25  # of a host's vCPUs for the input pipeline at the step-time bound
REFERENCE_MFU = 0.4


@dataclasses.dataclass(frozen=True)
class HostFeed:
  """What one TPU host must decode to keep its devices busy at `mfu`, in cores at a measured rate."""

  slice_name: str
  devices: int  # JAX devices on the host
  vcpus: int
  mfu: float  # 1.0: the step-time bound (peak FLOP/s, compute only)
  examples_per_s: float
  frames_per_s: float
  cores: float  # frames_per_s / (frames/s per core)

  @property
  def fraction(self) -> float:
    return self.cores / self.vcpus


def host_feed(slice_name: str, *, flops_per_example: float, frames_per_example: int, frames_per_core_s: float,
              mfu: float = 1.0) -> HostFeed:
  """Examples/s = mfu * devices on the host * peak FLOP/s per device (hardware.py) / train FLOPs per example."""
  topology = parse_topology(slice_name)
  devices = topology.num_chips * topology.generation.devices_per_chip
  examples = mfu * devices * topology.generation.peak_flops / flops_per_example
  frames = examples * frames_per_example
  return HostFeed(slice_name, devices, HOST_VCPUS[slice_name], mfu, examples, frames, frames / frames_per_core_s)


@dataclasses.dataclass(frozen=True)
class DataBenchResult:
  examples: int  # examples timed per measurement
  frames_per_example: int
  frame_size: tuple[int, int]  # stored JPEGs
  image_size: tuple[int, int]  # pipeline output
  augment_mode: str
  parallel_calls: int
  cores: int  # len(os.sched_getaffinity(0)): the CPUs this process (and tf.data's threads) may run on
  flops_per_example: float  # train (3x forward) FLOPs of the measured config
  pipeline_examples_per_s: float  # wall clock
  decode_examples_per_s: float  # like for like: the pipeline's resize methods
  bilinear_examples_per_s: float  # one bilinear resize
  pipeline_examples_per_cpu_s: float  # per second of process CPU time: steadier on a shared machine
  decode_examples_per_cpu_s: float
  bilinear_examples_per_cpu_s: float

  @property
  def ratio(self) -> float:
    return self.pipeline_examples_per_s / self.decode_examples_per_s

  @property
  def cpu_ratio(self) -> float:
    return self.pipeline_examples_per_cpu_s / self.decode_examples_per_cpu_s

  @property
  def bilinear_ratio(self) -> float:
    return self.pipeline_examples_per_s / self.bilinear_examples_per_s

  @property
  def frames_per_core_s(self) -> float:
    return self.pipeline_examples_per_s * self.frames_per_example / self.cores

  def hosts(self) -> list[HostFeed]:
    """Each slice of HOST_VCPUS at the step-time bound, then at REFERENCE_MFU."""
    return [host_feed(name, flops_per_example=self.flops_per_example, frames_per_example=self.frames_per_example,
                      frames_per_core_s=self.frames_per_core_s, mfu=mfu)
            for name in HOST_VCPUS for mfu in (1.0, REFERENCE_MFU)]


def synthetic_frames(count: int, frame_size: tuple[int, int], seed: int = 0) -> list[bytes]:
  """JPEGs (quality 90) of smooth colour gradients with a few boxes and mild noise, like video frames."""
  rng = np.random.default_rng(seed)
  h, w = frame_size
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  frames = []
  for _ in range(count):
    a, b, c = rng.uniform(-0.5, 0.5, (3, 3))
    image = 128 + 100 * (a * y[..., None] / h + b * x[..., None] / w) + 40 * c * np.sin(x[..., None] / 37)
    for _ in range(4):
      top, left = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
      image[top:top + h // 4, left:left + w // 4] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    frames.append(tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy())
  return frames


def write_corpus(directory: str | os.PathLike, config: ml_collections.ConfigDict, num_examples: int,
                 frames: list[bytes], num_files: int = 4, seed: int = 0) -> tuple[str, list[bytes]]:
  """Writes num_examples records drawing frames from `frames`; returns (glob pattern, all frames used)."""
  rng = np.random.default_rng(seed)
  n, length, directory = config.model.num_segments, config.model.segment_length, pathlib.Path(directory)
  records, used = [], []
  for _ in range(num_examples):
    chosen = [frames[i] for i in rng.integers(0, len(frames), n)]
    used += chosen
    raw, clean = ([list(rng.integers(100, 50000, k)) for k in rng.integers(1, length, n)] for _ in range(2))
    records.append(make_example(chosen, raw, clean, times=[float(i) for i in range(n)],
                                video_ids=['bench'] * n, is_end_of_video=[i == n - 1 for i in range(n)]))
  for i in range(num_files):
    write_tfrecord(str(directory / f'bench-{i:03d}.tfrecord'), records[i::num_files])
  return str(directory / 'bench-*.tfrecord'), used


def _examples_per_s(batches: Iterator, examples_per_batch: int, num_batches: int) -> tuple[float, float]:
  """(examples per wall second, per CPU second) after one warm-up batch (tracing, buffers)."""
  next(batches)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(batches)
  examples = num_batches * examples_per_batch
  return examples / (time.perf_counter() - wall), examples / (time.process_time() - cpu)


def decode_baseline(frames: list[bytes], config: ml_collections.ConfigDict, parallel: int, *,
                    like_for_like: bool = True) -> tf.data.Dataset:
  """Endless batches of num_segments frames (uint8 [N, H, W, 3] at config.model.image_size), decoded and resized.

  like_for_like: frame i uses RESIZE_METHODS[i % 4] with align_corners, the pipeline's mix without its
  random scale, crop, augmentation and padding; otherwise one tf.image.resize (bilinear, half pixel).
  """
  size = tf.constant(config.model.image_size, tf.int32)

  def mixed(i, jpeg):
    image = tf.io.decode_jpeg(jpeg, channels=3)[None]
    branches = [lambda op=op: tf.cast(op(images=image, size=size, align_corners=True)[0], tf.float32)
                for op in _RESIZE_OPS]
    return tf.saturate_cast(tf.switch_case(tf.cast(i % len(branches), tf.int32), branches) + 0.5, tf.uint8)

  def bilinear(i, jpeg):
    return tf.saturate_cast(tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3), size) + 0.5, tf.uint8)

  ds = tf.data.Dataset.from_tensor_slices(frames).repeat().enumerate()
  ds = ds.map(mixed if like_for_like else bilinear, num_parallel_calls=parallel)
  return ds.batch(config.model.num_segments).prefetch(tf.data.AUTOTUNE).with_options(pipeline.pipeline_options())


def _bench_config() -> ml_collections.ConfigDict:
  """The paper's model and data settings (configs/base.py differs only in compute dtype), a small batch."""
  config = default_config()
  config.train.global_batch_size = 8
  config.data.shuffle_buffer = 32
  return config


def run_data_benchmark(num_examples: int = 128, *, config: ml_collections.ConfigDict | None = None,
                       frame_size: tuple[int, int] = (384, 512), parallel_calls: int | None = None,
                       workdir: str | os.PathLike | None = None, repeats: int = 2) -> DataBenchResult:
  """Times the training pipeline and both decode baselines (best of `repeats`, alternating).

  The synthetic corpus holds num_examples examples drawing from 64 distinct frames; the pipeline runs
  in training mode (random scale, 4 resize methods, augmentation, shuffling) with `parallel_calls`
  examples at a time (default: one per core), the baselines with `parallel_calls` frames at a time.
  """
  config = config or _bench_config()
  cores = len(os.sched_getaffinity(0))
  parallel = parallel_calls or cores
  n, batch = config.model.num_segments, config.train.global_batch_size
  frames = synthetic_frames(min(64, num_examples * n), frame_size)
  with tempfile.TemporaryDirectory(dir=workdir) as tmp:
    pattern, used = write_corpus(tmp, config, num_examples, frames)
    makers: dict[str, tuple[Callable[[], Iterator], int, int]] = {
        'decode': (lambda: decode_baseline(used, config, parallel).as_numpy_iterator(), 1, num_examples),
        'bilinear': (lambda: decode_baseline(used, config, parallel, like_for_like=False).as_numpy_iterator(), 1,
                     num_examples),
        'pipeline': (lambda: pipeline.make_dataset(config, pattern, train=True, seed=0, process_index=0,
                                                   process_count=1, num_parallel_calls=parallel),
                     batch, math.ceil(num_examples / batch)),
    }
    best = {name: (0.0, 0.0) for name in makers}
    for _ in range(repeats):
      for name, (make, per_batch, num_batches) in makers.items():
        rates = _examples_per_s(make(), per_batch, num_batches)
        best[name] = tuple(max(a, b) for a, b in zip(best[name], rates, strict=True))
  return DataBenchResult(
      num_examples, n, tuple(frame_size), tuple(config.model.image_size), config.data.augment_mode, parallel, cores,
      model_flops_per_example(config), best['pipeline'][0], best['decode'][0], best['bilinear'][0],
      best['pipeline'][1], best['decode'][1], best['bilinear'][1])


def _rate(examples_per_s: float, per_cpu_s: float, n: int) -> str:
  return (f'{examples_per_s:.2f} examples/s = {examples_per_s * n:.1f} frames/s wall clock '
          f'({per_cpu_s * n:.1f} frames per CPU second)')


def _host_line(h: HostFeed) -> str:
  if h.mfu == 1.0:
    setting, goal = 'the step-time bound', ('within' if h.fraction <= GOAL_FRACTION else 'OVER')
    verdict = f': {goal} the {GOAL_FRACTION:.0%} goal'
  else:
    setting, verdict = f'{h.mfu:.0%} MFU', ''
  return (f'  {h.slice_name:5} ({h.devices} devices, {h.vcpus:3} vCPUs) at {setting:19}: {h.examples_per_s:6.1f} '
          f'examples/s = {h.frames_per_s:7.0f} frames/s -> {h.cores:6.1f} cores = {h.fraction:4.0%} of the '
          f'host{verdict}')


def format_report(r: DataBenchResult) -> str:
  """Human-readable lines, saying how each number was obtained; the last one is `pipeline/decode ratio: X`."""
  n, (h, w), (fh, fw) = r.frames_per_example, r.image_size, r.frame_size
  methods = '/'.join(RESIZE_METHODS)
  return '\n'.join([
      f'setting: JPEG frames stored at {fh}x{fw}, output {h}x{w}, {n} frames per example, training '
      f'augmentation (augment_mode {r.augment_mode!r}); {r.examples} examples timed, best of the repeats',
      f'measured here on {r.cores} cores (len(os.sched_getaffinity(0))); tf.data ran {r.parallel_calls} '
      'parallel calls on them',
      f'pipeline: {_rate(r.pipeline_examples_per_s, r.pipeline_examples_per_cpu_s, n)}',
      f'decode + resize like for like (same JPEGs to {h}x{w}, {methods} 1/4 each, align_corners): '
      f'{_rate(r.decode_examples_per_s, r.decode_examples_per_cpu_s, n)}',
      f'decode + one bilinear resize to {h}x{w} (the previous baseline): '
      f'{_rate(r.bilinear_examples_per_s, r.bilinear_examples_per_cpu_s, n)}',
      f'pipeline frames/s per core: {r.frames_per_core_s:.1f} (measured: wall-clock frames/s / {r.cores} cores; '
      f'{r.pipeline_examples_per_cpu_s * n:.1f} per CPU second)',
      'host cores to feed one TPU host, derived from the measurement and the bound:',
      '  examples/s = MFU x devices on the host x peak bf16 FLOP/s per device (merlot_jax/hardware.py) / '
      f'{r.flops_per_example / 1e12:.2f} TFLOP train FLOPs',
      f'  per example (3x forward, model_flops_per_example); frames/s = {n} x examples/s; cores = frames/s / '
      f'{r.frames_per_core_s:.1f} frames/s per core;',
      '  the step-time bound is MFU 1 (peak FLOP/s, compute only); goal: at most '
      f'{GOAL_FRACTION:.0%} of the host\'s vCPUs at the bound',
      *(_host_line(feed) for feed in r.hosts()),
      f'  at the per-CPU-second rate instead ({r.pipeline_examples_per_cpu_s * n:.1f} frames/s per core: this '
      'process\'s CPU time, steadier on a shared machine) every core count above is '
      f'x{r.frames_per_core_s / (r.pipeline_examples_per_cpu_s * n):.2f}',
      "ratios of pipeline to baseline examples/s ('decode': like for like; 'decode-bilinear': the previous baseline):",
      f'pipeline/decode-bilinear ratio: {r.bilinear_ratio:.3f}',
      f'pipeline/decode ratio per CPU second: {r.cpu_ratio:.3f}',
      f'pipeline/decode ratio: {r.ratio:.3f}',
  ])
