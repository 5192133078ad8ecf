"""MSRVTT-QA: the release reader, answer vocabulary, frame times, skips, scoring, and learning a synthetic task.

Fixtures follow the release's layout: <split>_qa.json files, videos named video<video_id>.mp4 under
TrainValVideo/, TestVideo/ or flat, written with the project's own encoder (preprocess/video.write_video).
"""

import io
import json
import logging
import pathlib
import time

import av
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from merlot_jax.config import load_config
from merlot_jax.data.tokenizer import train_sentencepiece
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.preprocess import video
from merlot_jax.special_tokens import PAD, START
from merlot_jax.tasks import finetune as ft
from merlot_jax.tasks import msrvtt_qa, open_qa
from merlot_jax.workdir import save_params
from tests.models.testlib import REPO, build_random
from tests.script_runner import run_script
from tests.tasks.word_tokenizer import WordTokenizer

COLOURS = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220), 'yellow': (230, 220, 30)}
WORDS = ['what', 'colour', 'is', 'it', 'who', 'runs', 'a', 'man']
FPS = 10


def write_colour_video(path: pathlib.Path, rgb, seed: int, num_frames: int = 10, size=(48, 64)) -> None:
  """A flat colour with per-pixel noise (a different pattern per seed)."""
  noise = np.random.default_rng(seed).integers(-25, 26, (num_frames, *size, 3))
  frames = np.clip(np.array(rgb)[None, None, None] + noise, 0, 255).astype(np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  video.write_video(path, list(frames), FPS)


def write_audio_only(path: pathlib.Path) -> None:
  """An mp4 that opens but has no video stream."""
  with av.open(str(path), 'w') as out:
    stream = out.add_stream('aac', rate=8000)
    for i in range(4):
      frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp', layout='mono')
      frame.sample_rate, frame.pts = 8000, i * 1024
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode(None):
      out.mux(packet)


def write_questions(root: pathlib.Path, split: str, rows) -> None:
  """rows: (id, video_id, question, answer); 'category_id' is there as in the release, and ignored."""
  root.mkdir(parents=True, exist_ok=True)
  entries = [{'category_id': 0, 'question': q, 'answer': a, 'video_id': v, 'id': i} for i, v, q, a in rows]
  (root / f'{split}_qa.json').write_text(json.dumps(entries))


@pytest.fixture(scope='module')
def release(tmp_path_factory) -> pathlib.Path:
  """video0 under TrainValVideo/ (red), video1 flat (blue), video2 missing, video3 without a video stream,
  video4 a truncated (corrupt) mp4 under TestVideo/; the question files one folder down."""
  root = tmp_path_factory.mktemp('msrvtt')
  write_colour_video(root / 'TrainValVideo' / 'video0.mp4', COLOURS['red'], seed=0)
  write_colour_video(root / 'video1.mp4', COLOURS['blue'], seed=1)
  write_audio_only(root / 'TrainValVideo' / 'video3.mp4')
  (root / 'TestVideo').mkdir()
  full = (root / 'video1.mp4').read_bytes()
  (root / 'TestVideo' / 'video4.mp4').write_bytes(full[:len(full) // 3])
  write_questions(root / 'MSRVTT-QA', 'train', [
      (0, 0, 'what colour is it', 'red'), (1, 0, 'who runs', 'man'), (2, 1, 'what colour is it', 'blue'),
      (3, 2, 'what is it', 'dog'), (4, 2, 'who runs', 'man'), (5, 3, 'what is it', 'cat'),
      (6, 4, 'what is it', 'cat'), (7, 'video1', 'who runs', 'zebra')])
  return root


# --- reader, vocabulary, frames, skips ------------------------------------------------------------


def test_answer_vocabulary_is_top_k_by_count_then_text():
  answers = ['man', 'dog', 'cat', 'man', 'cat', 'apple', 'zebra', 'dog', 'man', 'ball']
  # man 3; cat 2, dog 2 (tie: text order); apple, ball, zebra 1 each.
  assert msrvtt_qa.answer_vocabulary(answers, 4) == ('man', 'cat', 'dog', 'apple')
  assert msrvtt_qa.answer_vocabulary(answers, 100) == ('man', 'cat', 'dog', 'apple', 'ball', 'zebra')
  assert msrvtt_qa.answer_vocabulary(reversed(answers), 4) == ('man', 'cat', 'dog', 'apple')  # order-free


def test_reader_finds_the_files_and_names_bad_fields(release, tmp_path):
  questions = msrvtt_qa.read_questions(release, 'train')
  assert [(q.id, q.video_id, q.answer) for q in questions][:3] == [(0, 0, 'red'), (1, 0, 'man'), (2, 1, 'blue')]
  assert questions[7].video_id == 1  # "video1" as some copies write it
  assert msrvtt_qa.index_videos(release) == {0: release / 'TrainValVideo' / 'video0.mp4', 1: release / 'video1.mp4',
                                             3: release / 'TrainValVideo' / 'video3.mp4',
                                             4: release / 'TestVideo' / 'video4.mp4'}
  write_questions(tmp_path, 'val', [(0, 'clip7', 'what is it', 'dog')])
  with pytest.raises(ValueError, match=r'val_qa.json\[0\]: field "video_id" = \'clip7\''):
    msrvtt_qa.read_questions(tmp_path, 'val')
  with pytest.raises(FileNotFoundError, match='test_qa.json'):
    msrvtt_qa.read_questions(tmp_path, 'test')


def test_frames_come_from_the_middles_of_equal_spans(tmp_path):
  np.testing.assert_allclose(msrvtt_qa.frame_times(4.0, 4), [0.5, 1.5, 2.5, 3.5])
  np.testing.assert_allclose(msrvtt_qa.frame_times(3.0, 1), [1.5])
  # A 4 s clock: frame k (at k / 10 s) has red = 6k, so the frame shown at t is k = floor(10 t).
  path = tmp_path / 'video9.mp4'
  video.write_video(path, [np.full((48, 64, 3), (6 * k, 128, 64), np.uint8) for k in range(40)], FPS)
  jpegs = msrvtt_qa.read_video(path, 4)
  red = [np.asarray(Image.open(io.BytesIO(j)))[..., 0].mean() / 6 for j in jpegs]
  np.testing.assert_allclose(red, [5, 15, 25, 35], atol=0.5)


def test_skips_are_counted_per_reason_and_logged(release, caplog):
  with caplog.at_level(logging.INFO):
    split = msrvtt_qa.load_split(release, 'train', num_frames=2, workers=2)
  assert sorted(split.frames) == [0, 1] and all(len(j) == 2 for j in split.frames.values())
  assert [q.id for q in split.usable] == [0, 1, 2, 7]
  summary = split.summary()
  assert summary['questions'] == 8 and summary['usable'] == 4 and summary['videos'] == 5
  assert summary['skipped_questions'] == {'missing_video': 2, 'unreadable_video': 1, 'no_frames': 1}
  assert summary['skipped_videos'] == {'missing_video': 1, 'unreadable_video': 1, 'no_frames': 1}
  assert [(s['video_id'], s['reason']) for s in summary['skipped']] == [
      (2, 'missing_video'), (3, 'no_frames'), (4, 'unreadable_video')]
  log = caplog.text
  assert 'train: 4 of 8 questions usable; skipped 4: missing_video 2 (1 videos), unreadable_video 1 (1 videos), ' \
         'no_frames 1 (1 videos)' in log
  assert 'video2.mp4 is not below' in log and 'video3.mp4: no video stream' in log and 'video4.mp4' in log


def test_batches_hold_frames_question_and_answer_index(release):
  config = tiny_task(num_frames=2, num_answers=3)
  split = msrvtt_qa.load_split(release, 'train', num_frames=2)
  tok = WordTokenizer(WORDS)
  (batch,) = msrvtt_qa.qa_batches(split.usable, split, ('man', 'red', 'cat'), config, tok, 8)
  h, w = config.model.image_size
  assert batch['images'].shape == (8, 2, h, w, 3) and batch['images'].dtype == np.uint8
  assert batch['input_ids'].shape == (8, 2, 8) and batch['input_ids'].dtype == np.int32
  np.testing.assert_array_equal(batch['answer'], [1, 0, -1, -1, -1, -1, -1, -1])  # blue, zebra: outside
  np.testing.assert_array_equal(batch['weight'], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch['question_id'], [0, 1, 2, 7, 7, 7, 7, 7])
  ids = tok.ids
  np.testing.assert_array_equal(batch['input_ids'][0], [
      [START, ids['what'], ids['colour'], ids['is'], ids['it'], PAD, PAD, PAD], [START] + [PAD] * 7])
  # Frames fitted to the model's size (48 x 64 -> 64 x 85, padded right): red, then blue.
  assert batch['images'][0, 1, h // 2, 40, 0] > 150 and batch['images'][2, 0, h // 2, 40, 2] > 150
  assert batch['images'][0, 0, :, 90:].max() == 0


# --- scoring and loss ------------------------------------------------------------------------------


def test_accuracy_counts_outside_vocabulary_and_skipped_as_wrong():
  vocabulary = ('man', 'dog', 'cat')
  answers = {1: 'man', 2: 'man', 3: 'dog', 4: 'zebra', 5: 'cat', 6: 'man', 7: 'dog', 8: 'man'}
  # 1, 3 right; 2 wrong; 4 outside the vocabulary (wrong whatever is guessed); 5 guesses output 4, past the
  # 3-answer vocabulary of 5 outputs (wrong); 6 and 7 skipped (no prediction: wrong); 8 right.
  predicted = {1: 0, 2: 2, 3: 1, 4: 0, 5: 4, 8: 0}
  s = open_qa.score(answers, predicted, vocabulary, num_answers=5)
  assert (s.questions, s.evaluated) == (8, 6)
  assert s.accuracy == 3 / 8 and s.accuracy_evaluated == 3 / 6
  assert s.in_vocabulary == 7 / 8 and s.majority_answer == 'man'
  assert s.chance_majority == 4 / 8 and s.chance_uniform == pytest.approx(7 / 8 / 5)
  with pytest.raises(ValueError, match=r'questions \[9\]'):
    open_qa.score(answers, {9: 0}, vocabulary, 5)


def test_answer_loss_skips_unknown_answers_and_counts_them_wrong():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  answer = np.array([2, -1, 0, 3, 1], np.int32)
  weight = np.array([1, 1, 1, 1, 0], np.float32)
  loss, metrics = open_qa.answer_loss(logits, answer, weight)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -np.mean(log_probs[[0, 2, 3], answer[[0, 2, 3]]]), rtol=1e-5)
  right = (logits.argmax(-1) == answer)[:4]
  np.testing.assert_allclose(metrics['accuracy'], right.sum() / 4, rtol=1e-6)


# --- model ---------------------------------------------------------------------------------------


def tiny_task(num_frames=2, num_answers=4, steps=10, batch=8, lr=1e-3) -> ml_collections.ConfigDict:
  task = load_config(REPO / 'configs' / 'tiny.py')
  task.finetune = ml_collections.ConfigDict({'task': 'msrvtt_qa', 'num_frames': num_frames, 'segment_length': 8,
                                             'num_options': num_answers, 'heads': ('answer',)})
  task.model.dropout_rate = 0.0
  task.optim.learning_rate, task.optim.warmup_steps, task.optim.weight_decay = lr, 5, 0.01
  task.train.total_steps, task.train.global_batch_size = steps, batch
  task.train.log_every, task.train.checkpoint_every = steps, steps
  return ft.finetune_config(task, task)


def test_config_file_loads_into_a_finetune_config():
  config = ft.finetune_config(load_config(REPO / 'configs' / 'finetune_msrvtt_qa.py'),
                              load_config(REPO / 'configs' / 'base.py'))
  assert (config.model.num_segments, config.model.segments_per_group, config.finetune.num_options) == (5, 5, 1500)
  head = nnx.eval_shape(lambda: open_qa.OpenQAModel(config, rngs=nnx.Rngs(params=0))).head
  assert head.logits.kernel.shape == (384, 1500)


def write_colour_release(root: pathlib.Path, train: int, test: int) -> None:
  """'what colour is it' about a noisy flat-colour clip; the answer is its colour. The test split also has a
  question whose answer was never a training answer (purple) and one whose video is missing."""
  names = list(COLOURS)
  rng = np.random.default_rng(0)
  rows = {'train': [], 'test': []}
  for n in range(train + test):
    split, folder = ('train', 'TrainValVideo') if n < train else ('test', 'TestVideo')
    colour = names[int(rng.integers(len(names)))]
    write_colour_video(root / folder / f'video{n}.mp4', COLOURS[colour], seed=100 + n, num_frames=6)
    rows[split].append((n, n, 'what colour is it', colour))
  write_colour_video(root / 'TestVideo' / f'video{train + test}.mp4', (150, 40, 160), seed=7, num_frames=6)
  rows['test'] += [(train + test, train + test, 'what colour is it', 'purple'), (train + test + 1, 99_999,
                                                                                 'what colour is it', 'red')]
  for split, entries in rows.items():
    write_questions(root, split, entries)


@pytest.mark.slow
def test_finetunes_tiny_model_above_chance(tmp_path):
  """Random tiny body saved as the params checkpoint; train and evaluate through the task's own entry points
  (msrvtt_qa.finetune, finetune.restore_finetuned, msrvtt_qa.evaluate). One device: the task is under test."""
  start = time.time()
  write_colour_release(tmp_path / 'release', train=64, test=32)
  steps = 40
  config = tiny_task(num_frames=2, num_answers=6, steps=steps, batch=8, lr=3e-3)
  save_params(tmp_path / 'init', build_random(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0)), 3), config)
  tok, work = WordTokenizer(WORDS), tmp_path / 'work'
  state, vocabulary = msrvtt_qa.finetune(config, tmp_path / 'release', work, tok, init_checkpoint=tmp_path / 'init',
                                         progress=False, devices=jax.devices()[:1])
  assert int(state.step) == steps and set(vocabulary) == set(COLOURS)
  assert msrvtt_qa.load_vocabulary(work) == vocabulary
  assert json.loads((work / 'msrvtt_qa_train_data.json').read_text())['usable'] == 64

  _, params = ft.restore_finetuned(work, open_qa.OPEN_QA)
  summary = msrvtt_qa.evaluate(config, params, tmp_path / 'release', 'test', tok, vocabulary, workdir=work,
                               progress=False)
  print(f'synthetic colour QA: test accuracy {summary["accuracy"]:.3f} vs chance {summary["chance_majority"]:.3f} '
        f'(majority) / {summary["chance_uniform"]:.3f} (uniform) after {steps} steps ({time.time() - start:.0f} s)')
  assert summary['questions'] == 34 and summary['evaluated'] == 33
  assert summary['skipped_questions'] == {'missing_video': 1, 'unreadable_video': 0, 'no_frames': 0}
  assert summary['in_vocabulary'] == 33 / 34
  assert json.loads((work / 'msrvtt_qa_test.json').read_text())['accuracy'] == summary['accuracy']
  # Majority chance is 12 / 34 = 0.35 (standard deviation ~0.08 over 34 questions), so +0.3 is ~3.7 sigma. Body
  # seeds 3 / 5 / 6 gave 0.94 after these 40 steps; after 30 steps, seeds 3 / 4 / 5 gave 0.85 / 0.85 / 0.62.
  assert summary['accuracy'] > summary['chance_majority'] + 0.3


@pytest.mark.slow
def test_finetune_and_predict_scripts_on_the_release_layout(tmp_path, capsys):
  """scripts/finetune.py then scripts/predict.py as the README shows them, on the release layout: 2 steps of a
  random tiny body, then accuracies over every test question (the missing video's question counted wrong)."""
  write_colour_release(tmp_path / 'release', train=8, test=4)
  (tmp_path / 'text.txt').write_text('what colour is it ' + ' '.join(COLOURS) + ' purple\n' * 5)
  spm = train_sentencepiece([tmp_path / 'text.txt'], tmp_path / 'spm', 30, model_type='bpe')
  tiny = load_config(REPO / 'configs' / 'tiny.py')
  save_params(tmp_path / 'init', build_random(lambda: MerlotModel(tiny.model, rngs=nnx.Rngs(params=0)), 3), tiny)
  work, release = tmp_path / 'work', tmp_path / 'release'
  assert run_script('finetune.py', '--config', REPO / 'configs' / 'finetune_msrvtt_qa.py', '--init', tmp_path / 'init',
                    '--workdir', work, '--data_dir', release, '--tokenizer', spm, '--eval_split', 'test',
                    '--no_progress', '--config.train.total_steps=2', '--config.train.global_batch_size=8',
                    '--config.optim.warmup_steps=1', '--config.finetune.num_options=4',
                    '--config.finetune.num_frames=2', '--config.finetune.segment_length=16') == 0
  line = capsys.readouterr().out.splitlines()[-1]
  assert line.startswith('msrvtt_qa test: accuracy ') and ' over 6 questions ' in line, line
  assert line.endswith('skipped questions: missing_video 1'), line
  assert run_script('predict.py', '--workdir', work, '--data_dir', release, '--tokenizer', spm,
                    '--val_split', '', '--test_split', 'test') == 0
  predicted = json.loads((work / 'predictions' / 'msrvtt_qa_test.json').read_text())
  assert predicted == json.loads((work / 'msrvtt_qa_test.json').read_text())  # the same params on the same data
  assert predicted['questions'] == 6 and predicted['evaluated'] == 5
