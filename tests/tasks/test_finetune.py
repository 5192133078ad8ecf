"""Multiple-choice finetuning: loss, TFDS readers, model inputs, VCR metrics, and learning a synthetic task."""

import io
import itertools
import pathlib
import time

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from merlot_jax.config import load_config
from merlot_jax.data.host_batches import StepIndexed
from merlot_jax.data.tokenizer import train_sentencepiece
from merlot_jax.models.merlot import build_model
from merlot_jax.special_tokens import PAD, START
from merlot_jax.tasks import finetune as ft
from merlot_jax.tasks import mc_data
from merlot_jax.workdir import read_config, save_params
from tests.script_runner import run_script
from tests.tasks import release_fixtures as rf
from tests.tasks.word_tokenizer import WordTokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
COLOURS = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220), 'yellow': (230, 220, 30)}
WORDS = ['what', 'colour', 'is', 'it', 'why', 'because', 'hi', 'there', 'a', 'b', 'c', 'd', 'e', *COLOURS]


def jpeg(rgb, size=(48, 64), noise_seed=None) -> bytes:
  pixels = np.broadcast_to(np.array(rgb, np.uint8), (*size, 3)).copy()
  if noise_seed is not None:
    noise = np.random.default_rng(noise_seed).integers(-25, 26, pixels.shape)
    pixels = np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format='JPEG')
  return out.getvalue()


def tiny_task(num_frames=1, segment_length=8, num_options=4, heads=('answer',), steps=10, batch=8, lr=1e-3):
  task = load_config(REPO / 'configs' / 'tiny.py')
  task.finetune = ml_collections.ConfigDict({'task': 'synthetic', 'num_frames': num_frames,
                                             'segment_length': segment_length, 'num_options': num_options,
                                             'heads': heads})
  task.model.dropout_rate = 0.0
  task.optim.learning_rate, task.optim.warmup_steps, task.optim.weight_decay = lr, 5, 0.01
  task.train.total_steps, task.train.global_batch_size = steps, batch
  task.train.log_every, task.train.checkpoint_every = steps, steps
  return ft.finetune_config(task, task)


# --- (1) loss --------------------------------------------------------------------------------------


def test_multiple_choice_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=(6, 4)).astype(np.float32), np.array([0, 3, 1, 1, 2, 0])
  weight = np.array([1, 1, 1, 0, 1, 1], np.float32)
  loss, metrics = ft.multiple_choice_loss(logits, labels, weight)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -log_probs[np.arange(6), labels]
  np.testing.assert_allclose(loss, (nll * weight).sum() / 5, rtol=1e-5)
  np.testing.assert_allclose(metrics['accuracy'], ((logits.argmax(-1) == labels) * weight).sum() / 5, rtol=1e-6)
  unweighted, _ = ft.multiple_choice_loss(logits, labels)
  np.testing.assert_allclose(unweighted, nll.mean(), rtol=1e-5)


# --- (2) data and metrics --------------------------------------------------------------------------


def write_tvqa(root: pathlib.Path) -> None:
  """TVQA's layout (tests/tasks/release_fixtures.py): 2 clips of 3 frames (red, green, blue at 3 fps), a
  question on each whose ts covers its clip, one subtitle cue inside."""
  rows = []
  for n in range(2):
    vid = f's01e01_seg01_clip_0{n}'
    rf.write_tvqa_frames(root, 'bbt', vid, [jpeg(c) for c in list(COLOURS.values())[:3]])
    rf.write_tvqa_subtitles(root, vid, [(0.1, 0.9, 'hi there a b c d e a b c')])
    rows.append(rf.tvqa_question(n, vid, 'The Big Bang Theory', '0-1', 'what colour is it',
                                 ['red', 'green', 'blue', 'yellow', 'a'], n))
  rf.write_tvqa_questions(root, 'val', rows)


def write_vcr(root: pathlib.Path) -> None:
  """VCR's layout (tests/tasks/release_fixtures.py): 2 val annotations without object references."""
  rows = []
  for n in range(2):
    rf.write_vcr_image(root, f'lsmdc_0001_Movie/{n}.jpg', jpeg(COLOURS['red']), rf.vcr_metadata([], [], [], (48, 64)))
    rows.append(rf.vcr_annotation(f'val-{n}', f'lsmdc_0001_Movie/{n}.jpg', [], ['why'], [[w] for w in 'abcd'],
                                  [['because', 'a'], ['because', 'b'], ['because', 'c'], ['e']], (n, 3 - n)))
  rf.write_jsonl(root / 'val.jsonl', rows)


def test_tfds_builders_and_model_inputs(tmp_path):
  write_tvqa(tmp_path / 'tvqa')
  write_vcr(tmp_path / 'vcr')
  tfds_dir = str(tmp_path / 'tfds')
  # TFDS orders examples by a hash of their key: sort them back.
  tvqa = sorted(mc_data.load_problems('tvqa/frames_3', tmp_path / 'tvqa', 'val', data_dir=tfds_dir),
                key=lambda p: p.example_id)
  assert [p.example_id for p in tvqa] == ['0', '1']
  assert [p.label for p in tvqa] == [0, 1] and len(tvqa[0].jpegs) == 3 and tvqa[0].options[4] == 'a'
  frame = tmp_path / 'tvqa' / 'frames_hq' / 'bbt_frames' / 's01e01_seg01_clip_00' / '00003.jpg'
  assert tvqa[0].jpegs[2] == frame.read_bytes()  # stored as they are
  vcr = sorted(mc_data.load_problems('vcr', tmp_path / 'vcr', 'val', data_dir=tfds_dir),
               key=lambda p: (p.example_id, p.head))
  assert [(p.example_id, p.head, p.label) for p in vcr] == [('val-0', 0, 0), ('val-0', 1, 3), ('val-1', 0, 1),
                                                            ('val-1', 1, 2)]
  assert vcr[1].context == 'why a' and vcr[3].context == 'why b' and vcr[1].options[0] == 'because a'
  with pytest.raises(ValueError, match='not .train'):
    list(mc_data.load_problems('vcr', tmp_path / 'vcr', 'train', data_dir=tfds_dir))

  tok = WordTokenizer(WORDS)
  config = tiny_task(num_frames=2, segment_length=6, num_options=5, batch=4)
  (batch,) = mc_data.mc_batches(tvqa, config, tok, 4)
  h, w = config.model.image_size
  assert batch['images'].shape == (4, 2, h, w, 3) and batch['images'].dtype == np.uint8
  assert batch['input_ids'].shape == (4, 5, 2, 6)
  np.testing.assert_array_equal(batch['weight'], [1, 1, 0, 0])
  np.testing.assert_array_equal(batch['label'], [0, 1, 1, 1])
  ids = tok.ids
  # segment 0: START + context cut to fit + option; segment 1: START + the first 5 subtitle tokens.
  np.testing.assert_array_equal(batch['input_ids'][0, 1, 0], [START, ids['what'], ids['colour'], ids['is'],
                                                              ids['it'], ids['green']])
  np.testing.assert_array_equal(batch['input_ids'][0, 1, 1], [START] + tok.encode('hi there a b c'))
  # frames 0 and 2 of 3 (centres of two equal spans): red then blue.
  np.testing.assert_array_equal(mc_data.frame_choice(3, 2), [0, 2])
  assert batch['images'][0, 0, h // 2, w // 2, 0] > 150 and batch['images'][0, 1, h // 2, w // 2, 2] > 150
  np.testing.assert_array_equal(mc_data.option_ids(tok, 'why', 'because a', '', 1, 6)[0],
                                [START, ids['why'], ids['because'], ids['a'], PAD, PAD])


def test_vcr_accuracies_on_fixed_predictions():
  def pred(example, head, label, guess):
    return ft.Prediction(example, head, label, np.eye(4)[guess])

  predictions = [pred('a', 0, 1, 1), pred('a', 1, 2, 2),  # both right
                 pred('b', 0, 0, 0), pred('b', 1, 3, 1),  # answer right, rationale wrong
                 pred('c', 0, 2, 3), pred('c', 1, 0, 0),  # answer wrong, rationale right
                 pred('d', 0, 3, 3), pred('d', 1, 1, 1)]  # both right
  metrics = ft.summarize(predictions, ft.VCR_HEADS)
  assert metrics == {'answer_accuracy': 0.75, 'rationale_accuracy': 0.75, 'q_a': 0.75, 'qa_r': 0.75, 'q_ar': 0.5}
  with pytest.raises(ValueError, match='lack an answer or a rationale'):
    ft.summarize(predictions[:3], ft.VCR_HEADS)


# --- (3) learning a synthetic task ----------------------------------------------------------------


def colour_problems(count: int, seed: int) -> list[mc_data.Problem]:
  """The frame's colour is named by the right option; options are the 4 colour words shuffled."""
  rng = np.random.default_rng(seed)
  names = list(COLOURS)
  out = []
  for n in range(count):
    options = [names[i] for i in rng.permutation(4)]
    label = int(rng.integers(4))
    out.append(mc_data.Problem(f'{seed}-{n}', (jpeg(COLOURS[options[label]], noise_seed=seed * 10_000 + n),),
                               'what colour is it', tuple(options), label))
  return out


def test_finetunes_tiny_model_above_chance(tmp_path):
  """Init: the tiny config's random initialisation saved as a params checkpoint (no pretraining). One device:
  the task, not the sharding, is under test (the trainer's meshes are tests/train's)."""
  start = time.time()
  tok = WordTokenizer(WORDS)
  steps = 200
  config = tiny_task(steps=steps, batch=8, lr=3e-3)
  save_params(tmp_path / 'init', build_model(load_config(REPO / 'configs' / 'tiny.py'), seed=3), config)

  train = list(mc_data.mc_batches(colour_problems(256, seed=1), config, tok, 8))
  cycled = lambda start, _: StepIndexed(itertools.islice(itertools.cycle(train), start, None))
  state = ft.finetune(config, tmp_path / 'work', cycled,
                      init_checkpoint=tmp_path / 'init', progress=False, devices=jax.devices()[:1])
  assert int(state.step) == steps

  held_out = mc_data.mc_batches(colour_problems(64, seed=2), config, tok, 8)
  metrics = ft.summarize(ft.predict(config, jax.device_get(state.params), held_out), config.finetune.heads)
  print(f'synthetic colour task: held-out accuracy {metrics["answer_accuracy"]:.3f} vs chance '
        f'{ft.uniform_chance(config.finetune.num_options):.2f} after {steps} steps ({time.time() - start:.0f} s)')
  # Chance is 0.25; with 64 held-out questions its standard deviation is 0.054, so 0.45 is 3.7 sigma above.
  # Learning the colour from scratch is slow and seed-dependent: after 80 steps on 64 problems, model seeds
  # 3 / 4 / 5 gave 0.28 / 0.48 / 0.33 (and 0.53 for seed 3 before a float-rounding-level change to GroupNorm);
  # after these 200 steps on 256 problems, 0.67 / 0.67 / 0.47.
  assert metrics['answer_accuracy'] > 0.45


def test_pretrained_init_loads_body_and_keeps_new_head(tmp_path):
  config = tiny_task()
  body = build_model(load_config(REPO / 'configs' / 'tiny.py'), seed=5)
  save_params(tmp_path / 'init', body, config)
  fresh = ft.nnx.state(ft.MultipleChoiceModel(config, rngs=ft.nnx.Rngs(params=0)), ft.nnx.Param).to_pure_dict()
  loaded = ft.pretrained_init(tmp_path / 'init', config)(fresh)
  expected = ft.nnx.state(body, ft.nnx.Param).to_pure_dict()
  jax.tree.map(np.testing.assert_array_equal, loaded['merlot'], expected)
  jax.tree.map(np.testing.assert_array_equal, loaded['head'], fresh['head'])
  np.testing.assert_allclose(loaded['head']['bias1'], [-np.log(3)], rtol=1e-6)


def write_vcr_release(root: pathlib.Path) -> None:
  """A VCR release in its unpacked layout (tests/tasks/release_fixtures.py): one image, 4 train and 2 val
  questions."""
  size, shot = (64, 96), 'lsmdc_0001_Movie/shot.jpg'
  rf.write_vcr_image(root, shot, rf.jpeg(COLOURS['red'], size),
                     rf.vcr_metadata([[5, 5, 40, 50, 0.9]], [[[[5, 5], [40, 5], [20, 50]]]], ['person'], size))
  row = lambda annot_id, n: rf.vcr_annotation(
      annot_id, shot, ['person'], ['Why', 'is', [0], 'here', '?'], [[[0], 'is', w, '.'] for w in 'abcd'],
      [['because', w] for w in 'abcd'], (n % 4, (n + 1) % 4))
  rf.write_jsonl(root / 'train.jsonl', [row(f'train-{n}', n) for n in range(4)])
  rf.write_jsonl(root / 'val.jsonl', [row(f'val-{n}', n) for n in range(2)])


@pytest.mark.slow
def test_finetune_script_takes_config_overrides(tmp_path, capsys):
  """scripts/finetune.py as its docstring shows, with --config.* overrides of the task config: 2 steps of the tiny
  model on a VCR release (segments cut to 16 tokens), then the eval split's accuracies."""
  write_vcr_release(tmp_path / 'vcr')
  (tmp_path / 'text.txt').write_text('Why is person here? person is a b c d. because a b c d. answer question: '
                                     'provide rationale:\n' * 5)
  spm = train_sentencepiece([tmp_path / 'text.txt'], tmp_path / 'spm', 40, model_type='bpe')
  tiny = load_config(REPO / 'configs' / 'tiny.py')
  save_params(tmp_path / 'init', build_model(tiny, seed=3), tiny)
  assert run_script('finetune.py', '--config', REPO / 'configs' / 'finetune_vcr.py', '--init', tmp_path / 'init',
                    '--workdir', tmp_path / 'work', '--data_dir', tmp_path / 'vcr', '--tokenizer', spm,
                    '--tfds_data_dir', tmp_path / 'tfds', '--no_progress', '--config.train.total_steps=2',
                    '--config.train.global_batch_size=8', '--config.optim.warmup_steps=1',
                    '--config.finetune.segment_length=16', '--config.finetune.image_size=(64, 96)') == 0
  saved = read_config(tmp_path / 'work')
  assert (saved.train.total_steps, saved.train.global_batch_size, saved.model.segment_length) == (2, 8, 16)
  assert saved.model.image_size == (64, 96)  # --config.finetune.image_size, not VCR's 384 x 704
  assert saved.model.hidden_size == tiny.model.hidden_size  # the checkpoint's model, not the task config's
  assert capsys.readouterr().out.splitlines()[-1].startswith('vcr val: answer_accuracy ')
