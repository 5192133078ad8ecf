"""Writing the pretraining corpus: videos -> examples of N consecutive segments -> sharded TFRecords.

Videos (sorted by path) are cut into shards of `videos_per_shard` consecutive videos. Within a shard a rolling
buffer over the videos' segments emits an example every N segments, across video boundaries, as the
original's data/process.py does; the last < N segments of a shard are dropped (counted in the manifest).
A shard depends on its own videos only, so shards are independent units of work: `write_corpus` here and
the Beam pipeline (beam_pipeline.py) write the same shards, and a rerun keeps finished ones.
Videos are processed in spawned worker processes (for workers > 1, and for any number with `video_timeout`):
a worker whose video takes longer than `video_timeout` (a decoder hung on a bad file or a stalled mount) is
killed, one that dies (a segfault in a decoder, an OOM kill) is replaced, and the video is skipped (reason
`timeout` or `worker_died`) while the run goes on.

DATA_DIR layout (the record format is in record_format.py):
  train-00000-of-00008.tfrecord ...   shards, each written atomically
  shard_stats/train-00000-of-00008.json   per-shard counts, written before its shard
  manifest.json                       settings and totals, rewritten as shards finish
A shard is finished when both its file and its stats exist; a rerun with the same settings redoes only the
others, and one with other settings (tokenizer, N, inputs, ...) stops with an error instead of mixing them.
"""

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence

import tqdm

from merlot_jax.data import record_format
from merlot_jax.data.tokenizer import load_tokenizer
from merlot_jax.extras import import_extra
from merlot_jax.preprocess import framed_segments as framed

pebble = import_extra('pebble', 'data')
tf = import_extra('tensorflow', 'data')

STATS_DIR = 'shard_stats'


@dataclasses.dataclass(frozen=True)
class Options:
  num_segments: int = 16  # segments per example
  segment_tokens: int = 32  # max tokens per segment, the start token included
  videos_per_shard: int = 64
  jpeg_quality: int = 90

  def __post_init__(self):
    ok = {'num_segments': self.num_segments >= 1, 'segment_tokens': self.segment_tokens >= 2,
          'videos_per_shard': self.videos_per_shard >= 1, 'jpeg_quality': 1 <= self.jpeg_quality <= 100}
    bad = [f'{k}={getattr(self, k)}' for k, good in ok.items() if not good]
    if bad:
      raise ValueError(f'corpus.Options: {", ".join(bad)} out of range; need num_segments >= 1, segment_tokens '
                       '>= 2 (the start token and one more), videos_per_shard >= 1, 1 <= jpeg_quality <= 100')


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run writes: the shards' videos and the settings recorded in (and checked against) the manifest."""
  out_dir: str
  shards: list[list[framed.VideoInput]]
  settings: dict
  finished: dict[int, dict]  # shard index -> stats of shards kept from an earlier run
  unusable: list[dict[str, str]]  # paths named like videos that are not processed (framed.scan_videos)

  def pending(self) -> list[int]:
    return [i for i in range(len(self.shards)) if i not in self.finished]


def shard_name(index: int, num_shards: int) -> str:
  return f'train-{index:05d}-of-{num_shards:05d}.tfrecord'


def pack_examples(results: Sequence[framed.VideoResult], num_segments: int) -> tuple[list[bytes], int]:
  """Serialized examples of `num_segments` consecutive segments, and the number of leftover segments."""
  examples, buffer = [], []
  for result in results:
    for k, seg in enumerate(result.segments):
      buffer.append((result.video.video_id, seg, k == len(result.segments) - 1))
      if len(buffer) == num_segments:
        ids, segs, ends = zip(*buffer, strict=True)
        examples.append(record_format.make_example(
            [s.jpeg for s in segs], [s.raw_tokens for s in segs], [s.clean_tokens for s in segs],
            [s.time for s in segs], ids, ends))
        buffer = []
  return examples, len(buffer)


def _write_json(path: str, data: dict) -> None:
  with record_format.atomic_output(path) as tmp, tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(json.dumps(data, indent=1) + '\n')


def _read_json(path: str) -> dict:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _stats_path(out_dir: str, name: str) -> str:
  return os.path.join(out_dir, STATS_DIR, name.replace('.tfrecord', '.json'))


def write_shard(out_dir: str, index: int, num_shards: int, num_segments: int,
                results: Sequence[framed.VideoResult]) -> dict:
  """Packs one shard's video results (in video order), writes its stats then the shard; returns the stats."""
  name = shard_name(index, num_shards)
  examples, dropped = pack_examples(results, num_segments)
  stats = {
      'file': name,
      'examples': len(examples),
      'segments': len(examples) * num_segments,
      'dropped_segments': dropped,
      'videos': sum(r.skip_reason is None for r in results),
      'skipped': [{'video': r.video.name, 'reason': r.skip_reason, 'detail': r.detail}
                  for r in results if r.skip_reason is not None],
  }
  _write_json(_stats_path(out_dir, name), stats)
  record_format.write_tfrecord(os.path.join(out_dir, name), examples)
  return stats


def finished_shards(out_dir: str, num_shards: int) -> dict[int, dict]:
  """Stats of the shards whose file and stats both exist, by shard index."""
  finished = {}
  for i in range(num_shards):
    name = shard_name(i, num_shards)
    if tf.io.gfile.exists(os.path.join(out_dir, name)) and tf.io.gfile.exists(_stats_path(out_dir, name)):
      finished[i] = _read_json(_stats_path(out_dir, name))
  return finished


def write_manifest(plan: Plan, finished: dict[int, dict]) -> dict:
  """Settings plus totals over the finished shards; `complete` once every shard is written."""
  stats = [finished[i] for i in sorted(finished)]
  skipped = plan.unusable + [s for shard in stats for s in shard['skipped']]
  manifest = {
      **plan.settings,
      'complete': len(finished) == len(plan.shards),
      'shards': len(plan.shards),
      'shards_written': len(finished),
      'videos': sum(len(v) for v in plan.shards),
      'videos_written': sum(s['videos'] for s in stats),
      'skipped': dict(sorted(collections.Counter(s['reason'] for s in skipped).items())),
      'skipped_videos': skipped,
      'examples': sum(s['examples'] for s in stats),
      'segments': sum(s['segments'] for s in stats),
      'dropped_segments': sum(s['dropped_segments'] for s in stats),
      'shard_examples': {s['file']: s['examples'] for s in stats},
  }
  _write_json(os.path.join(plan.out_dir, record_format.MANIFEST), manifest)
  return manifest


def make_plan(videos_dir: str, out_dir: str, tokenizer_path: str, options: Options = Options()) -> Plan:
  """Finds the videos, checks DATA_DIR's manifest against this run's settings and finds finished shards."""
  videos, unusable = framed.scan_videos(videos_dir)
  if not videos:
    raise ValueError(f'{videos_dir}: no videos ({", ".join(framed.VIDEO_SUFFIXES)}) found')
  tokenizer = load_tokenizer(tokenizer_path)
  beside = lambda path: os.path.relpath(path, videos_dir) if path else ''
  inputs = hashlib.sha256('\n'.join(f'{v.name}\t{beside(v.transcript)}\t{beside(v.denoised)}'
                                    for v in videos).encode())
  settings = {'tokenizer': tokenizer.name, 'vocab_size': tokenizer.vocab_size,
              **dataclasses.asdict(options), 'inputs_sha256': inputs.hexdigest()}
  per = options.videos_per_shard
  shards = [videos[i:i + per] for i in range(0, len(videos), per)]
  tf.io.gfile.makedirs(os.path.join(out_dir, STATS_DIR))
  manifest_path = os.path.join(out_dir, record_format.MANIFEST)
  if tf.io.gfile.exists(manifest_path):
    old = _read_json(manifest_path)
    changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
    if changed:
      raise ValueError(f'{manifest_path}: this DATA_DIR holds a corpus written with other settings '
                       f'(field: (written, now) = {changed}); write to an empty directory instead')
  for stale in tf.io.gfile.glob(os.path.join(out_dir, '.tmp-*')) + tf.io.gfile.glob(
      os.path.join(out_dir, STATS_DIR, '.tmp-*')):
    tf.io.gfile.remove(stale)
  return Plan(out_dir, shards, settings, finished_shards(out_dir, len(shards)), unusable)


def _pooled_result(video: framed.VideoInput, future: pebble.ProcessFuture, timeout: float | None) -> framed.VideoResult:
  """The worker's result, or a skip if the video ran past `timeout` or its worker process died."""
  try:
    return future.result()
  except TimeoutError:
    return framed.VideoResult(video, skip_reason='timeout', detail=f'{video.video}: no result after {timeout:g} s')
  except pebble.ProcessExpired as e:
    how = (f'was killed by signal {-e.exitcode} ({signal.strsignal(-e.exitcode)})' if e.exitcode < 0
           else f'exited with code {e.exitcode}')
    return framed.VideoResult(video, skip_reason='worker_died', detail=f'{video.video}: its worker process {how}')


def _pool_map(pool: pebble.ProcessPool, kwargs: dict, timeout: float | None, ahead: int,
              videos: Iterable[framed.VideoInput]) -> Iterator[framed.VideoResult]:
  """Results in the videos' order, with at most `ahead` videos scheduled at a time (memory stays bounded)."""
  scheduled = collections.deque()
  for video in videos:
    scheduled.append((video, pool.schedule(framed.process_in_worker, (video,), kwargs, timeout=timeout)))
    if len(scheduled) >= ahead:
      yield _pooled_result(*scheduled.popleft(), timeout)
  while scheduled:
    yield _pooled_result(*scheduled.popleft(), timeout)


@contextlib.contextmanager
def _video_mapper(workers: int, tokenizer_path: str, options: Options, video_timeout: float | None
                  ) -> Iterator[Callable[[list[framed.VideoInput]], Iterator[framed.VideoResult]]]:
  """A function mapping videos to results in order: in this process, or in a pool of spawned workers.

  A time limit needs a worker process to kill, so with one the videos go to a pool even for workers <= 1.
  """
  kwargs = {'segment_tokens': options.segment_tokens, 'jpeg_quality': options.jpeg_quality}
  timeout = video_timeout if video_timeout is not None and video_timeout > 0 else None
  if workers <= 1 and timeout is None:
    tokenizer = load_tokenizer(tokenizer_path)
    yield lambda videos: (framed.process_video(v, tokenizer, **kwargs) for v in videos)
    return
  workers = max(workers, 1)
  ctx = multiprocessing.get_context('spawn')  # this process has TensorFlow loaded; workers need not
  pool = pebble.ProcessPool(workers, initializer=framed.init_worker, initargs=(tokenizer_path,), context=ctx)
  try:
    yield functools.partial(_pool_map, pool, kwargs, timeout, 2 * workers)
  finally:  # every result is in by now, unless the run failed: then in-flight videos need not finish
    pool.stop()
    pool.join()


def write_corpus(videos_dir: str, out_dir: str, tokenizer_path: str, options: Options = Options(),
                 workers: int = 1, progress: bool = True, video_timeout: float | None = None) -> dict:
  """Writes (or finishes) the corpus of the videos under `videos_dir` into `out_dir`; returns the manifest.

  `video_timeout`: seconds a video may take in its worker before it is killed and the video skipped (None or
  <= 0: no limit).
  """
  plan = make_plan(videos_dir, out_dir, tokenizer_path, options)
  finished = dict(plan.finished)
  pending = plan.pending()
  manifest = write_manifest(plan, finished)
  jobs = [v for i in pending for v in plan.shards[i]]
  with (_video_mapper(workers, tokenizer_path, options, video_timeout) as mapper,
        tqdm.tqdm(total=len(jobs), unit='video', disable=not progress, desc='preprocess') as bar):
    results = mapper(jobs)
    for i in pending:
      shard_results = []
      for _ in plan.shards[i]:
        shard_results.append(next(results))
        bar.update()
      finished[i] = write_shard(out_dir, i, len(plan.shards), options.num_segments, shard_results)
      manifest = write_manifest(plan, finished)
      bar.set_postfix(examples=manifest['examples'], skipped=len(manifest['skipped_videos']))
  return manifest
