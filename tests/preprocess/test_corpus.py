"""Corpus writing: examples across videos, skips, hung and dead workers, resume, atomic shards, Beam, TFDS."""

import contextlib
import glob
import io
import json
import os
import pathlib
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from merlot_jax.data import record_format
from merlot_jax.data.tokenizer import load_tokenizer, train_sentencepiece
from merlot_jax.preprocess import beam_pipeline, corpus, synthetic, tfds_merlot, video
from merlot_jax.preprocess import framed_segments as framed
from merlot_jax.preprocess.segmenting import make_segments
from merlot_jax.preprocess.transcripts import load_transcript
from tests.script_runner import run_script

FPS = 10
WORD_SECONDS = 0.1
SENTENCE = 24  # words; with a word-level tokenizer a 24-word sentence is exactly one segment
VOCAB = ('alpha', 'beta', 'gamma', 'delta', 'red', 'green', 'blue', 'shape')
N = 4  # segments per example in the hand-checked corpus
# Segments per video of the hand-checked corpus, and what packing them by N = 4 must give.
HAND_SEGMENTS = {'v0': 3, 'v1': 6, 'v2': 2, 'v3': 5}
HAND_EXAMPLES = [  # (video, segment) per slot
    [('v0', 0), ('v0', 1), ('v0', 2), ('v1', 0)],
    [('v1', 1), ('v1', 2), ('v1', 3), ('v1', 4)],
    [('v1', 5), ('v2', 0), ('v2', 1), ('v3', 0)],
    [('v3', 1), ('v3', 2), ('v3', 3), ('v3', 4)],
]
HAND_IS_END = [[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
HAND_SRC_INDEX = [[0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 2], [0, 0, 0, 0]]


def sentence_words(video_name, k):
  """The words of segment k of a video: distinct per segment, ending a sentence."""
  rng = np.random.default_rng([int(video_name[1:]), k])
  return [str(w) for w in rng.choice(VOCAB, SENTENCE - 1)] + ['stop.']


def frame_index(frame):
  """Decodes the index drawn by `clock_frames`."""
  return round(frame[..., 0].mean() / 8) + 32 * round(frame[..., 1].mean() / 8)


def clock_frames(num):
  return [np.full((48, 64, 3), (8 * (k % 32), 8 * (k // 32), 128), np.uint8) for k in range(num)]


def write_clip(folder, name, num_segments, video_seconds=None, transcript=True, denoised=False):
  """A video whose frames encode their index, with a JSON transcript of `num_segments` sentences."""
  words = [w for k in range(num_segments) for w in sentence_words(name, k)]
  timed = [{'word': w, 'start': 0.05 + WORD_SECONDS * i, 'end': 0.05 + WORD_SECONDS * (i + 1)}
           for i, w in enumerate(words)]
  seconds = video_seconds or timed[-1]['end'] + 0.5
  video.write_video(folder / f'{name}.mp4', clock_frames(round(seconds * FPS)), FPS)
  if transcript:
    (folder / f'{name}.json').write_text(json.dumps(timed))
  if denoised:
    clean = ' '.join(w.capitalize() for w in words)
    (folder / f'{name}.grover.json').write_text(json.dumps({'denoised': [{'cleanasr': clean}]}))


@pytest.fixture(scope='module')
def tokenizer_path(tmp_path_factory):
  folder = tmp_path_factory.mktemp('tokenizer')
  text = folder / 'text.txt'
  text.write_text(' '.join(VOCAB + tuple(w.capitalize() for w in VOCAB) + ('stop.', 'Stop.')) + '\n')
  return str(train_sentencepiece([text], folder / 'words', 40, model_type='word'))


@pytest.fixture(scope='module')
def hand_videos(tmp_path_factory):
  folder = tmp_path_factory.mktemp('hand_videos')
  for name, count in HAND_SEGMENTS.items():
    write_clip(folder, name, count, denoised=name == 'v2')
  return folder


def read_records(data_dir):
  return [record_format.parse_example(r.numpy())
          for path in sorted(data_dir.glob('train-*.tfrecord')) for r in tf.data.TFRecordDataset(str(path))]


def shard_bytes(data_dir):
  return {p.name: p.read_bytes() for p in sorted(data_dir.glob('train-*.tfrecord'))}


def test_examples_hand_checked(hand_videos, tokenizer_path, tmp_path):
  tok = load_tokenizer(tokenizer_path)
  manifest = corpus.write_corpus(str(hand_videos), str(tmp_path), tokenizer_path,
                                 corpus.Options(num_segments=N), progress=False)
  records = read_records(tmp_path)
  assert len(records) == manifest['examples'] == len(HAND_EXAMPLES)
  assert manifest['segments'] == 16 and manifest['dropped_segments'] == 0 and manifest['complete']
  for record, slots, is_end, src in zip(records, HAND_EXAMPLES, HAND_IS_END, HAND_SRC_INDEX, strict=True):
    assert record['video_id'] == [name for name, _ in slots]
    assert record['is_end_of_video'] == is_end
    assert record['video_src_index'] == src
    assert record['tokens_raw_len'] == record['tokens_clean_len'] == [SENTENCE] * N
    for k, (name, seg) in enumerate(slots):
      words = sentence_words(name, seg)
      assert tok.decode(record['tokens_raw'][k]) == ' '.join(words)
      clean = [w.capitalize() for w in words] if name == 'v2' else words
      assert tok.decode(record['tokens_clean'][k]) == ' '.join(clean)
      start = 0.05 + WORD_SECONDS * SENTENCE * seg
      assert record['times'][k] == pytest.approx(start + WORD_SECONDS * SENTENCE / 2, abs=1e-4)
      frame = np.asarray(Image.open(io.BytesIO(record['frames'][k])))
      assert frame.shape == (48, 64, 3)
      assert frame_index(frame) == int(record['times'][k] * FPS)


def test_tf_parsing_with_features(hand_videos, tokenizer_path, tmp_path):
  corpus.write_corpus(str(hand_videos), str(tmp_path), tokenizer_path, corpus.Options(num_segments=N),
                      progress=False)
  path = sorted(tmp_path.glob('train-*.tfrecord'))[0]
  serialized = next(iter(tf.data.TFRecordDataset(str(path))))
  parsed = tf.io.parse_single_example(serialized, record_format.FEATURES)
  expected = record_format.parse_example(serialized.numpy())
  assert parsed['frames'].shape == (N,) and parsed['times'].shape == (N,)
  assert parsed['tokens_raw'].to_list() == expected['tokens_raw']
  assert parsed['tokens_clean'].shape.as_list() == [N, None]
  assert parsed['video_src_index'].numpy().tolist() == expected['video_src_index']


def test_token_counts_match_all_segments(tmp_path, tokenizer_path):
  """On the synthetic corpus (VTT transcripts): records hold exactly the segments, in order, of every video."""
  synthetic.make_corpus(tmp_path / 'syn', 3, 0, synthetic.Config(min_events=4, max_events=6, num_stories=1,
                                                                 heldout_fraction=0.0))
  tok_path = train_sentencepiece([tmp_path / 'syn' / 'narration.txt'], tmp_path / 'spm', 150, model_type='bpe')
  videos = tmp_path / 'syn' / 'videos' / 'train'
  manifest = corpus.write_corpus(str(videos), str(tmp_path / 'data'), str(tok_path),
                                 corpus.Options(num_segments=5), progress=False)
  tok = load_tokenizer(tok_path)
  reference = [s for p in sorted(videos.glob('*.vtt')) for s in make_segments(load_transcript(p), tok)]
  records = read_records(tmp_path / 'data')
  assert manifest['segments'] + manifest['dropped_segments'] == len(reference)
  written = [seg for r in records for seg in r['tokens_raw']]
  assert written == [list(s.raw_tokens) for s in reference[:len(written)]]
  assert sum(sum(r['tokens_raw_len']) for r in records) == sum(len(s.raw_tokens) for s in reference[:len(written)])
  assert [t for r in records for t in r['times']] == pytest.approx([s.time for s in reference[:len(written)]])


def test_bad_inputs_are_skipped_and_counted(tmp_path, tokenizer_path):
  videos = tmp_path / 'videos'
  videos.mkdir()
  write_clip(videos, 'v0', 3)
  write_clip(videos, 'v1', 2)
  write_clip(videos, 'v2', 2)
  (videos / 'v2.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42 not really a video' * 50)  # garbage
  write_clip(videos, 'v3', 2)
  data = (videos / 'v3.mp4').read_bytes()
  (videos / 'v3.mp4').write_bytes(data[:len(data) // 2])  # truncated
  write_clip(videos, 'v4', 3, video_seconds=2.0)  # 7 s of transcript, 2 s of video
  write_clip(videos, 'v5', 2, transcript=False)
  write_clip(videos, 'v6', 2)
  (videos / 'v6.json').write_text('')
  write_clip(videos, 'v7', 2)
  (videos / 'v7.json').write_text('{"not": "a transcript"}')
  os.mkfifo(videos / 'v8.mp4')  # named like videos, never processed: each listed with its reason
  (videos / 'v9.mp4').mkdir()
  (videos / 'v10.mkv').symlink_to(videos / 'gone.mkv')
  manifest = corpus.write_corpus(str(videos), str(tmp_path / 'data'), tokenizer_path,
                                 corpus.Options(num_segments=N, videos_per_shard=3), progress=False)
  assert manifest['skipped'] == {'bad_transcript': 1, 'broken_link': 1, 'empty_transcript': 1, 'missing_transcript': 1,
                                 'not_a_regular_file': 2, 'unreadable_video': 2, 'video_shorter_than_transcript': 1}
  assert {(s['video'], s['reason'], s['detail']) for s in manifest['skipped_videos'][:3]} == {
      ('v10.mkv', 'broken_link', f'{videos}/v10.mkv: links to {videos}/gone.mkv'),
      ('v8.mp4', 'not_a_regular_file', f'{videos}/v8.mp4: a FIFO'),
      ('v9.mp4', 'not_a_regular_file', f'{videos}/v9.mp4: a directory')}
  assert {(s['video'], s['reason']) for s in manifest['skipped_videos'][3:]} == {
      ('v2.mp4', 'unreadable_video'), ('v3.mp4', 'unreadable_video'), ('v4.mp4', 'video_shorter_than_transcript'),
      ('v5.mp4', 'missing_transcript'), ('v6.mp4', 'empty_transcript'), ('v7.mp4', 'bad_transcript')}
  assert all(s['detail'] for s in manifest['skipped_videos'])
  assert manifest['videos'] == 8 and manifest['videos_written'] == 2 and manifest['complete']
  records = read_records(tmp_path / 'data')
  assert len(records) == manifest['examples'] == 1  # v0 and v1: 5 segments -> one example of 4
  assert records[0]['video_id'] == ['v0', 'v0', 'v0', 'v1']


def child_pids():
  """This process's children, zombies included, but multiprocessing's resource tracker (it lives on)."""
  pids = set()
  for proc in glob.glob('/proc/[0-9]*'):
    with contextlib.suppress(OSError):  # the process may be gone already
      ppid = int(pathlib.Path(proc, 'stat').read_text().rsplit(')', 1)[1].split()[1])
      if ppid == os.getpid() and b'resource_tracker' not in pathlib.Path(proc, 'cmdline').read_bytes():
        pids.add(int(proc[6:]))
  return pids


def holders(path):
  """The children of this process that have `path` open (realpath: no error for an fd closed meanwhile)."""
  path = os.path.realpath(path)
  return {pid for pid in child_pids() if path in map(os.path.realpath, glob.glob(f'/proc/{pid}/fd/*'))}


def end_fifo_reads(fifo):
  """Lets a reader waiting on `fifo` read its end: a time limit that fails to kill fails its test, not hangs it."""
  with contextlib.suppress(OSError):  # ENXIO: no reader
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture(scope='module')
def hand_shards(hand_videos, tokenizer_path, tmp_path_factory):
  """The shard (one) of the hand-checked corpus with N = 4, written in this process."""
  out = tmp_path_factory.mktemp('hand_shards')
  corpus.write_corpus(str(hand_videos), str(out), tokenizer_path, corpus.Options(num_segments=N), progress=False)
  return shard_bytes(out)


@pytest.fixture
def fifo_video(hand_videos, tmp_path, monkeypatch):
  """A FIFO v1x.mp4 (v1's transcript beside it) among the hand-checked videos: PyAV waits for a writer.

  scan_videos skips a FIFO named like a video (not_a_regular_file), so the FIFO is added to its list of
  usable videos in this process (which plans).
  """
  before = child_pids()
  fifo = tmp_path / 'fifo' / 'v1x.mp4'
  fifo.parent.mkdir()
  os.mkfifo(fifo)
  extra = framed.VideoInput(fifo.name, str(fifo), shutil.copy(hand_videos / 'v1.json', fifo.parent), None)
  scan_videos = framed.scan_videos

  def with_fifo(root):
    videos, unusable = scan_videos(root)
    return sorted([*videos, extra], key=lambda v: v.name), unusable

  monkeypatch.setattr(framed, 'scan_videos', with_fifo)
  watchdog = threading.Timer(30, end_fifo_reads, [fifo])
  watchdog.start()
  yield fifo
  watchdog.cancel()
  assert child_pids() <= before  # no worker left behind, blocked on the FIFO or otherwise


def kill_fifo_reader(fifo, seconds=30):
  """SIGKILLs (as the OOM killer does) the child process that opens `fifo` to read, once it has it open."""
  end = time.monotonic() + seconds
  while time.monotonic() < end:
    try:
      fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader opens it
    except OSError:
      time.sleep(0.02)
      continue
    try:
      while not (pids := holders(fifo)) and time.monotonic() < end:
        time.sleep(0.01)
      for pid in pids:
        os.kill(pid, signal.SIGKILL)
      return
    finally:
      os.close(fd)  # after the kill: the reader would otherwise read the end of the file


@pytest.mark.parametrize('workers', [1, 2])
@pytest.mark.parametrize('reason', ['timeout', 'worker_died'])
def test_hung_or_dead_worker(fifo_video, hand_shards, hand_videos, tokenizer_path, tmp_path, reason, workers):
  """A worker hung past the limit is killed, one killed (as by the OOM killer) is replaced: its video alone is
  skipped and the others give the shard of a run without it (with workers=1, all from the new worker)."""
  if reason == 'worker_died':
    threading.Thread(target=kill_fifo_reader, args=(fifo_video,), daemon=True).start()
  out = tmp_path / 'data'
  manifest = corpus.write_corpus(str(hand_videos), str(out), tokenizer_path, corpus.Options(num_segments=N),
                                 workers=workers, progress=False, video_timeout=3 if reason == 'timeout' else 60)
  detail = 'no result after 3 s' if reason == 'timeout' else 'its worker process was killed by signal 9 (Killed)'
  assert manifest['skipped'] == {reason: 1}
  assert manifest['skipped_videos'] == [{'video': 'v1x.mp4', 'reason': reason, 'detail': f'{fifo_video}: {detail}'}]
  assert manifest['videos_written'] == 4 and manifest['examples'] == len(HAND_EXAMPLES) and manifest['complete']
  assert shard_bytes(out) == hand_shards


class Crash(Exception):
  pass


def test_interrupted_run_resumes_to_identical_shards(hand_videos, tokenizer_path, tmp_path, monkeypatch):
  options = corpus.Options(num_segments=2, videos_per_shard=1)  # 4 shards of 1, 3, 1 and 2 examples
  full = tmp_path / 'full'
  corpus.write_corpus(str(hand_videos), str(full), tokenizer_path, options, progress=False)
  assert len(shard_bytes(full)) == 4

  # Killed while writing shard 2: shards 0 and 1 are finished, nothing is left under shard 2's name.
  part = tmp_path / 'part'
  write_tfrecord = record_format.write_tfrecord

  def killed_in_shard_2(path, records):
    def first_then_crash():
      yield from list(records)[:1]
      raise Crash('killed while writing shard 2')
    write_tfrecord(path, first_then_crash() if path.endswith(corpus.shard_name(2, 4)) else records)

  monkeypatch.setattr(record_format, 'write_tfrecord', killed_in_shard_2)
  with pytest.raises(Crash):
    corpus.write_corpus(str(hand_videos), str(part), tokenizer_path, options, progress=False)
  monkeypatch.setattr(record_format, 'write_tfrecord', write_tfrecord)
  assert sorted(shard_bytes(part)) == [corpus.shard_name(0, 4), corpus.shard_name(1, 4)]
  assert not list(part.glob('.tmp-*'))
  manifest = json.loads((part / record_format.MANIFEST).read_text())
  assert not manifest['complete'] and manifest['shards_written'] == 2
  (part / f'.tmp-{corpus.shard_name(2, 4)}-stale').write_bytes(b'half a shard')  # as if killed mid-write

  processed = []
  process_video = framed.process_video
  monkeypatch.setattr(framed, 'process_video', lambda v, *a, **k: processed.append(v.name) or process_video(v, *a, **k))
  manifest = corpus.write_corpus(str(hand_videos), str(part), tokenizer_path, options, progress=False)
  assert processed == ['v2.mp4', 'v3.mp4']  # finished shards are kept, not redone
  assert shard_bytes(part) == shard_bytes(full)
  assert manifest == json.loads((full / record_format.MANIFEST).read_text())
  assert not list(part.glob('.tmp-*'))

  # A deleted last shard is redone alone.
  processed.clear()
  (full / corpus.shard_name(3, 4)).unlink()
  corpus.write_corpus(str(hand_videos), str(full), tokenizer_path, options, progress=False)
  assert processed == ['v3.mp4'] and shard_bytes(full) == shard_bytes(part)


def test_atomic_tfrecord_write(tmp_path):
  def records():
    yield b'first'
    raise Crash()

  path = tmp_path / 'train-00000-of-00001.tfrecord'
  with pytest.raises(Crash):
    record_format.write_tfrecord(str(path), records())
  assert list(tmp_path.iterdir()) == []
  record_format.write_tfrecord(str(path), [b'a', b'b'])
  assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == [b'a', b'b']
  assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_other_settings_are_refused(hand_videos, tokenizer_path, tmp_path):
  corpus.write_corpus(str(hand_videos), str(tmp_path), tokenizer_path, corpus.Options(num_segments=N),
                      progress=False)
  with pytest.raises(ValueError, match='manifest.json.*num_segments'):
    corpus.write_corpus(str(hand_videos), str(tmp_path), tokenizer_path, corpus.Options(num_segments=8),
                        progress=False)


def test_beam_matches_multiprocessing(hand_videos, tokenizer_path, tmp_path):
  options = corpus.Options(num_segments=N, videos_per_shard=2)
  pooled = corpus.write_corpus(str(hand_videos), str(tmp_path / 'pool'), tokenizer_path, options, workers=2,
                               progress=False)
  beamed = beam_pipeline.run(str(hand_videos), str(tmp_path / 'beam'), tokenizer_path, options,
                             ['--runner=DirectRunner', '--direct_num_workers=1'])
  assert beamed == pooled
  as_multiset = lambda d: sorted(r.numpy() for p in sorted(d.glob('train-*')) for r in tf.data.TFRecordDataset(str(p)))
  assert as_multiset(tmp_path / 'beam') == as_multiset(tmp_path / 'pool')
  assert shard_bytes(tmp_path / 'beam') == shard_bytes(tmp_path / 'pool')  # even shard by shard


def test_preprocess_script_and_tfds(hand_videos, tokenizer_path, tmp_path):
  data_dir = tmp_path / 'tfds' / tfds_merlot.NAME / tfds_merlot.VERSION
  assert run_script('preprocess.py', '--videos', hand_videos, '--out', data_dir, '--tokenizer', tokenizer_path,
                    '--workers', 1, '--num_segments', N, '--videos_per_shard', 3) == 0
  records = read_records(data_dir)
  for builder in (tfds.builder(tfds_merlot.NAME, data_dir=str(tmp_path / 'tfds')),
                  tfds.builder_from_directory(str(data_dir))):
    assert builder.info.splits['train'].num_examples == len(records) == 3  # shards of 3 + 1 videos
    examples = list(builder.as_dataset(split='train', shuffle_files=False).as_numpy_iterator())
    for got, want in zip(examples, records, strict=True):
      assert got['frames'].tolist() == want['frames']
      assert got['video_src_index'].tolist() == want['video_src_index']
      assert got['tokens_clean'].tolist() == [t for seg in want['tokens_clean'] for t in seg]
      assert got['times'].tolist() == want['times']


def test_preprocess_script_passes_unknown_arguments_to_beam_only(hand_videos, tokenizer_path, tmp_path, monkeypatch,
                                                                 capsys):
  calls = []
  monkeypatch.setattr(beam_pipeline, 'run', lambda *args: calls.append(args) or {'examples': 0})
  monkeypatch.setattr(tfds_merlot, 'write_metadata', lambda out: None)
  common = ('--videos', hand_videos, '--out', tmp_path / 'data', '--tokenizer', tokenizer_path, '--num_segments', N)
  beam_args = ['--runner=DirectRunner', '--direct_num_workers', '1', '--no_pipeline_type_check']
  assert run_script('preprocess.py', *common, '--beam', *beam_args) == 0
  (args,) = calls
  assert args[:3] == (str(hand_videos), str(tmp_path / 'data'), tokenizer_path) and args[3].num_segments == N
  assert args[4] == beam_args
  assert run_script('preprocess.py', *common, '--runner=DirectRunner') == 1
  assert 'unrecognized arguments: --runner=DirectRunner (only --beam passes arguments on)' in capsys.readouterr().err
  assert 'workers' in run_script('preprocess.py', *common, '--workers=two')  # absl's message, exit status 1
  assert len(calls) == 1 and not (tmp_path / 'data').exists()


def test_real_youtube_transcript_with_denoised_text(youtube_sample, tmp_path):
  """The sample video's YouTube VTT and .grover.json (denoised text), over a stand-in video of its length."""
  sample = youtube_sample.parent
  videos = tmp_path / 'videos'
  videos.mkdir()
  for suffix in ('.en.vtt', '.grover.json'):
    (videos / f'WAaKRUoY6Io{suffix}').write_bytes((sample / f'WAaKRUoY6Io{suffix}').read_bytes())
  duration = json.loads((sample / 'WAaKRUoY6Io.info.json').read_text())['duration']
  video.write_video(videos / 'WAaKRUoY6Io.mp4', clock_frames(duration), fps=1)
  clean_text = tmp_path / 'clean.txt'
  clean_text.write_text('\n'.join(
      d['cleanasr'] for d in json.loads((sample / 'WAaKRUoY6Io.grover.json').read_text())['denoised']))
  tok_path = str(train_sentencepiece([clean_text], tmp_path / 'spm', 300, model_type='bpe'))
  manifest = corpus.write_corpus(str(videos), str(tmp_path / 'data'), tok_path, progress=False)
  assert manifest['videos_written'] == 1 and manifest['examples'] == 2  # 32 of its segments
  records = read_records(tmp_path / 'data')
  tok = load_tokenizer(tok_path)
  raw = ' '.join(tok.decode(s) for r in records for s in r['tokens_raw'])
  clean = ' '.join(tok.decode(s) for r in records for s in r['tokens_clean'])
  assert raw.startswith('guys this is a delicious sweet onion')
  assert clean.startswith('Guys, this is a delicious sweet onion tomato sauce.')
  times = [t for r in records for t in r['times']]
  assert times == sorted(times) and times[-1] < duration
  for r in records:
    assert all(n <= 31 for n in r['tokens_raw_len'] + r['tokens_clean_len'])
    assert [frame_index(np.asarray(Image.open(io.BytesIO(f)))) for f in r['frames']] == [int(t) for t in r['times']]
