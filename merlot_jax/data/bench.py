"""Input pipeline throughput: the full pipeline against bare JPEG decode + resize of the same frames.

Both run in the same process on the same cores with the same number of parallel calls; the ratio of
their examples/s says how much the pipeline's parsing, augmentation and batching cost on top of the
decoding that any pipeline has to do.
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
import tensorflow as tf

from merlot_jax.config import default_config
from merlot_jax.data import pipeline
from merlot_jax.data.record_format import make_example, write_tfrecord


@dataclasses.dataclass(frozen=True)
class DataBenchResult:
  examples: int  # examples timed per measurement
  frames_per_example: int
  parallel_calls: int
  pipeline_examples_per_s: float  # wall clock
  decode_examples_per_s: float
  pipeline_examples_per_cpu_s: float  # per second of process CPU time: steadier on a shared machine
  decode_examples_per_cpu_s: float

  @property
  def ratio(self) -> float:
    return self.pipeline_examples_per_s / self.decode_examples_per_s

  @property
  def cpu_ratio(self) -> float:
    return self.pipeline_examples_per_cpu_s / self.decode_examples_per_cpu_s


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


def _decode_only(frames: list[bytes], image_size: tuple[int, int], n: int, parallel: int) -> Iterator:
  def decode(jpeg):
    image = tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3), image_size)
    return tf.cast(tf.round(image), tf.uint8)
  ds = tf.data.Dataset.from_tensor_slices(frames).repeat().map(decode, num_parallel_calls=parallel)
  ds = ds.batch(n).prefetch(tf.data.AUTOTUNE).with_options(pipeline.pipeline_options())
  return ds.as_numpy_iterator()


def run_data_benchmark(num_examples: int = 128, *, config: ml_collections.ConfigDict | None = None,
                       frame_size: tuple[int, int] = (384, 512), parallel_calls: int | None = None,
                       workdir: str | os.PathLike | None = None, repeats: int = 2) -> DataBenchResult:
  """Times the training pipeline and bare decode + resize (best of `repeats`, alternating).

  The synthetic corpus holds num_examples examples drawing from 64 distinct frames; the pipeline runs
  in training mode (random scale, 4 resize methods, augmentation, shuffling) with `parallel_calls`
  examples at a time, the bare decode with `parallel_calls` frames at a time.
  """
  if config is None:
    config = default_config()
    config.train.global_batch_size = 8
    config.data.shuffle_buffer = 32
  parallel = parallel_calls or os.cpu_count() or 1
  n, batch = config.model.num_segments, config.train.global_batch_size
  frames = synthetic_frames(min(64, num_examples * n), frame_size)
  with tempfile.TemporaryDirectory(dir=workdir) as tmp:
    pattern, used = write_corpus(tmp, config, num_examples, frames)
    makers: dict[str, tuple[Callable[[], Iterator], int, int]] = {
        'decode': (lambda: _decode_only(used, tuple(config.model.image_size), n, parallel), 1, num_examples),
        'pipeline': (lambda: pipeline.make_dataset(config, pattern, train=True, seed=0, process_index=0,
                                                   process_count=1, num_parallel_calls=parallel),
                     batch, math.ceil(num_examples / batch)),
    }
    best = {name: (0.0, 0.0) for name in makers}
    for _ in range(repeats):
      for name, (make, per_batch, num_batches) in makers.items():
        rates = _examples_per_s(make(), per_batch, num_batches)
        best[name] = tuple(max(a, b) for a, b in zip(best[name], rates, strict=True))
  return DataBenchResult(num_examples, n, parallel, best['pipeline'][0], best['decode'][0], best['pipeline'][1],
                         best['decode'][1])


def format_report(r: DataBenchResult) -> str:
  """Human-readable lines; the last one is `pipeline/decode ratio: X`."""
  return '\n'.join([
      f'examples timed: {r.examples} ({r.frames_per_example} frames each), parallel calls: {r.parallel_calls}',
      f'pipeline: {r.pipeline_examples_per_s:.2f} examples/s ({r.pipeline_examples_per_cpu_s:.2f} per CPU second)',
      f'decode + resize only: {r.decode_examples_per_s:.2f} examples/s ({r.decode_examples_per_cpu_s:.2f} per CPU '
      'second)',
      f'pipeline/decode ratio per CPU second: {r.cpu_ratio:.3f}',
      f'pipeline/decode ratio: {r.ratio:.3f}',
  ])
