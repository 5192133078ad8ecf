"""VCR as released: object references rendered as words, objects drawn on the right pixels, the TFDS builder
over a small release in the exact layout (with broken media skipped and counted), model inputs with the
original's prompts, training augmentation, the leaderboard CSV, and scripts/predict.py end to end."""

import io
import json
import pathlib
import zlib

import jax
import numpy as np
import pytest
from PIL import Image

from merlot_jax.config import load_config
from merlot_jax.data.tokenizer import load_tokenizer, train_sentencepiece
from merlot_jax.special_tokens import END, PAD, START
from merlot_jax.tasks import finetune as ft
from merlot_jax.tasks import leaderboard, mc_data, vcr
from tests.script_runner import run_script
from tests.tasks import release_fixtures as rf

REPO = pathlib.Path(__file__).resolve().parents[2]
SIZE = (100, 120)  # (height, width)
GREY = (100, 100, 100)
OBJECTS = ['person', 'person', 'chair', 'cup', 'person']
BOXES = [[5, 5, 45, 60, 0.9], [65, 5, 110, 45, 0.9], [65, 60, 110, 90, 0.8], [10, 75, 40, 92, 0.7],
         [48, 70, 56, 96, 0.6]]
TRIANGLE = [[5, 5], [45, 5], [25, 60]]  # person 0's segmentation: (x 40, y 54) is in its box, not in it
SEGMS = [[TRIANGLE]] + [[[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]]] for b in BOXES[1:]]
QUESTION = ['Why', 'is', [0], 'looking', 'at', [1], '?']
ANSWERS = [[[0, 1], 'are', 'friends', '.'], [[2], 'is', 'empty', '.'], ['She', 'does', "n't", 'know', [1], '.'],
           [[0], "'s", 'waiting', 'for', '"', 'Casey', '"', '.']]
RATIONALES = [[[1], 'is', 'holding', 'a', [3], '.'], ['They', 'smile', ',', 'and', [0, 1, 2], 'are', 'close', '.'],
              ['(', 'See', [2], ')', '.'], ['Nothing', '...']]
MOVIE = 'lsmdc_0001_Some_Movie'


class HashTokenizer:
  """Whitespace words -> 100 + crc32(word) % 300 (any text encodes)."""

  name, vocab_size = 'test-hash', 400

  def encode(self, text: str) -> list[int]:
    return [100 + zlib.crc32(w.encode()) % 300 for w in text.split()]


# --- text ----------------------------------------------------------------------------------------


def test_detokenize_joins_punctuation_clitics_brackets_and_quotes():
  words = ['He', 'said', '"', 'hi', '"', '(', 'twice', ')', ',', 'do', "n't", 'go', '$', '5', '...', 'it', "'s",
           'ok', '?']
  assert vcr.detokenize(words) == 'He said "hi" (twice), don\'t go $5... it\'s ok?'
  assert vcr.detokenize(['"', 'Yes', '"', 'she', 'said']) == '"Yes" she said'


def test_render_object_references_as_the_original():
  r = lambda tokens: vcr.render(tokens, OBJECTS)
  assert r(QUESTION) == 'Why is Casey looking at Riley?'
  assert [r(a) for a in ANSWERS] == ['Casey and Riley are friends.', 'Chair is empty.', "She doesn't know Riley.",
                                     'Casey\'s waiting for "Casey".']
  assert [r(x) for x in RATIONALES] == ['Riley is holding a cup.', 'They smile, and Casey Riley and chair are close.',
                                        '(See chair).', 'Nothing...']
  # QA->R's context is question + answer rendered as one text: the answer's leading object is not capitalised.
  assert r(QUESTION + ANSWERS[1]) == 'Why is Casey looking at Riley? chair is empty.'
  # Names go by object index modulo the 50 names, whatever the other objects are.
  many = ['dog'] * 51 + ['person']
  assert vcr.reference_name([51], many) == 'Riley' and vcr.reference_name([0, 51], many) == 'dog and Riley'
  assert vcr.reference_name([0], many, starts_text=True) == 'Dog'
  with pytest.raises(IndexError):
    r([[7], 'is', 'here'])


# --- drawing ---------------------------------------------------------------------------------------


def blend(colour, background=GREY):
  """alpha_composite of the 15%-opaque fill over the background, per channel."""
  a = vcr.OPACITY / 255
  return np.array([c * a + g * (1 - a) for c, g in zip(colour, background, strict=True)])


def drawn(kind: str, mode: str) -> np.ndarray:
  image = Image.fromarray(np.full((*SIZE, 3), GREY, np.uint8))
  annotation = {'objects': OBJECTS, 'question': QUESTION, 'answer_choices': ANSWERS, 'rationale_choices': RATIONALES}
  polygons = vcr.object_polygons(rf.vcr_metadata(BOXES, SEGMS, OBJECTS, SIZE), kind)
  return np.asarray(vcr.draw_objects(image, polygons, *vcr.referenced(annotation, mode))).astype(int)


def test_referenced_objects_per_mode():
  annotation = {'objects': OBJECTS, 'question': QUESTION, 'answer_choices': ANSWERS, 'rationale_choices': RATIONALES}
  assert vcr.referenced(annotation, 'answer') == ({0, 1}, {2})
  assert vcr.referenced(annotation, 'rationale') == ({0, 1}, {2, 3})


def test_boxes_land_on_the_right_pixels():
  image = drawn('bbox', 'rationale')
  red, green, grey = vcr.PALETTE[0], vcr.PALETTE[1], vcr.PALETTE[-1]
  # Outlines (7 px, centred on the box edges) in each object's colour: persons by index, other objects grey.
  for (x, y), colour in {(25, 5): red, (25, 2): red, (25, 8): red, (5, 30): red, (45, 30): red, (25, 60): red,
                         (88, 5): green, (110, 25): green, (88, 60): grey, (25, 92): grey}.items():
    np.testing.assert_allclose(image[y, x], colour, atol=1, err_msg=f'outline pixel {(x, y)}')
  # Inside: the 15% fill over the image; just past the outline and on unreferenced person 4: untouched.
  np.testing.assert_allclose(image[30, 25], blend(red), atol=1)
  np.testing.assert_allclose(image[54, 40], blend(red), atol=1)  # near the box's corner
  np.testing.assert_allclose(image[25, 88], blend(green), atol=1)
  np.testing.assert_allclose(image[75, 88], blend(grey), atol=1)
  for x, y in [(25, 64), (55, 30), (52, 85), (115, 98), (0, 0)]:
    np.testing.assert_array_equal(image[y, x], GREY, err_msg=f'pixel {(x, y)}')
  # Q->A's drawing leaves the cup (only a rationale refers to it) alone.
  np.testing.assert_array_equal(drawn('bbox', 'answer')[84, 25], GREY)


def test_segmentation_outlines_land_on_the_right_pixels():
  image = drawn('segm', 'answer')
  red = vcr.PALETTE[0]
  np.testing.assert_allclose(image[5, 25], red, atol=1)  # the triangle's top edge
  np.testing.assert_allclose(image[20, 25], blend(red), atol=1)  # inside the triangle
  np.testing.assert_array_equal(image[54, 40], GREY)  # inside the box, outside the triangle
  np.testing.assert_array_equal(image[84, 25], GREY)  # the cup: not referenced in answer mode


# --- the release -----------------------------------------------------------------------------------


def write_release(root: pathlib.Path) -> None:
  good = rf.jpeg(GREY, SIZE)
  meta = rf.vcr_metadata(BOXES, SEGMS, OBJECTS, SIZE)
  for name, data, metadata in [('shot_0.jpg', good, meta), ('truncated.jpg', rf.truncated(good), meta),
                               ('nometa.jpg', good, None)]:
    rf.write_vcr_image(root, f'{MOVIE}/{name}', data, metadata)
  a = lambda i, img, labels: rf.vcr_annotation(i, f'{MOVIE}/{img}', OBJECTS, QUESTION, ANSWERS, RATIONALES, labels)
  rf.write_jsonl(root / 'train.jsonl', [a(f'train-{n}', 'shot_0.jpg', (n % 4, (n + 1) % 4)) for n in range(4)])
  rf.write_jsonl(root / 'val.jsonl', [
      a('val-0', 'shot_0.jpg', (0, 1)), a('val-1', 'shot_0.jpg', (2, 3)),
      rf.vcr_annotation('val-2', 'lsmdc_0002_Gone/shot.jpg', OBJECTS, QUESTION, ANSWERS, RATIONALES, (0, 0)),
      a('val-3', 'truncated.jpg', (0, 0)), a('val-4', 'nometa.jpg', (0, 0)), a('val-5', 'absent.jpg', (0, 0))])
  rf.write_jsonl(root / 'test.jsonl', [a('test-1', 'shot_0.jpg', None), a('test-0', 'shot_0.jpg', None)])


@pytest.fixture(scope='module')
def release(tmp_path_factory) -> tuple[pathlib.Path, str]:
  return rf.written_release(tmp_path_factory, 'vcr_release', write_release)


def by_id(problems):
  return {(p.example_id, p.head): p for p in problems}


def test_builder_reads_the_release_and_counts_skips(release):
  root, tfds_dir = release
  val = by_id(mc_data.load_problems('vcr', root, 'val', data_dir=tfds_dir))
  assert sorted(val) == [('val-0', 0), ('val-0', 1), ('val-1', 0), ('val-1', 1)]
  q_a, qa_r = val['val-0', 0], val['val-0', 1]
  assert (q_a.context, q_a.label, q_a.prompt, q_a.end) == ('Why is Casey looking at Riley?', 0,
                                                           ' answer question:', True)
  assert q_a.options[1] == 'Chair is empty.'
  assert (qa_r.context, qa_r.label, qa_r.prompt) == ('Why is Casey looking at Riley? Casey and Riley are friends.',
                                                     1, ' provide rationale:')
  assert qa_r.options[0] == 'Riley is holding a cup.'
  assert val['val-1', 1].context == 'Why is Casey looking at Riley? She doesn\'t know Riley.'
  # The stored drawings (JPEG): Q->A without the cup, QA->R with it (grey 145 outline on grey 100).
  answer_image = np.asarray(Image.open(io.BytesIO(q_a.jpegs[0]))).astype(int)
  rationale_image = np.asarray(Image.open(io.BytesIO(qa_r.jpegs[0]))).astype(int)
  assert answer_image[5, 25, 0] > 200 and answer_image[5, 25, 1] < 60  # person 0's red outline
  assert abs(answer_image[92, 25] - 100).max() < 12 and abs(rationale_image[92, 25] - 145).max() < 12
  counts = mc_data.skip_counts('vcr', root, data_dir=tfds_dir)
  assert counts['val'] == {'questions': 6, 'fallbacks': {}, 'skipped': {
      'missing_image_folder': 1, 'truncated_jpeg': 1, 'missing_metadata': 1, 'missing_image': 1}}
  assert counts['train'] == {'questions': 4, 'skipped': {}, 'fallbacks': {}}


def test_test_split_asks_rationales_under_each_answer(release):
  root, tfds_dir = release
  test = by_id(mc_data.load_problems('vcr', root, 'test', data_dir=tfds_dir))
  assert sorted(test) == sorted([('test-0', 0), ('test-1', 0)] + [(f'test-{n}@a{j}', 1) for n in (0, 1)
                                                                  for j in range(4)])
  assert {p.label for p in test.values()} == {-1}
  assert test['test-0@a1', 1].context == 'Why is Casey looking at Riley? chair is empty.'


def test_bbox_builder_config_draws_boxes(release):
  root, tfds_dir = release
  q_a = by_id(mc_data.load_problems('vcr/bbox', root, 'val', data_dir=tfds_dir))['val-0', 0]
  image = np.asarray(Image.open(io.BytesIO(q_a.jpegs[0]))).astype(int)
  assert image[54, 40, 0] > 112  # in the box, outside the triangle: tinted red here
  with pytest.raises(ValueError, match="not 'nope'"):
    list(mc_data.load_problems('vcr', root, 'nope', data_dir=tfds_dir))


def finetune_config(steps: int = 2, batch: int = 8, segment_length: int = 24):
  task = load_config(REPO / 'configs' / 'tiny.py')
  task.finetune = load_config(REPO / 'configs' / 'finetune_vcr.py').finetune
  task.finetune.segment_length = segment_length
  task.finetune.image_size = task.model.image_size  # the tiny model's frames, not VCR's 384 x 704
  task.data.random_scale_min, task.data.random_scale_max, task.data.augment_prob = 0.9, 1.1, 0.0
  task.train.total_steps, task.train.global_batch_size = steps, batch
  task.train.log_every = task.train.checkpoint_every = steps
  task.optim.warmup_steps = 1
  return ft.finetune_config(task, task)


def test_vcr_config_takes_the_originals_image_size_and_the_checkpoints_model():
  pretrained = load_config(REPO / 'configs' / 'tiny.py')
  config = ft.finetune_config(load_config(REPO / 'configs' / 'finetune_vcr.py'), pretrained)
  assert config.model.image_size == (384, 704)  # merlot_vcr.yaml; pretraining's frames are 192 x 352
  assert config.model.hidden_size == pretrained.model.hidden_size
  assert (config.model.num_segments, config.model.segments_per_group) == (1, 1)


def test_model_inputs_have_the_original_prompts_and_end(release):
  root, tfds_dir = release
  problems = sorted(mc_data.load_problems('vcr', root, 'val', data_dir=tfds_dir), key=lambda p: (p.example_id, p.head))
  config, tok = finetune_config(segment_length=20), HashTokenizer()
  (batch,) = mc_data.mc_batches(problems, config, tok, 4)
  assert batch['input_ids'].shape == (4, 4, 1, 20) and batch['images'].shape == (4, 1, 64, 96, 3)
  np.testing.assert_array_equal(batch['head'], [0, 1, 0, 1])
  q_a = [START] + tok.encode('answer question: Why is Casey looking at Riley?') + tok.encode('Chair is empty.')
  np.testing.assert_array_equal(batch['input_ids'][0, 1, 0], q_a + [END] + [PAD] * (19 - len(q_a)))
  # Too long for 20 tokens: the context is cut, the option and END are kept.
  option = tok.encode('They smile, and Casey Riley and chair are close.')
  row = batch['input_ids'][1, 1, 0]
  np.testing.assert_array_equal(row[-len(option) - 1:], option + [END])
  np.testing.assert_array_equal(row[:4], [START] + tok.encode('provide rationale: Why'))


def test_training_augmentation_is_random_and_resumes_exactly(release):
  root, tfds_dir = release
  config, tok = finetune_config(batch=2), HashTokenizer()
  load = lambda seed: mc_data.load_problems('vcr', root, 'train', data_dir=tfds_dir, shuffle_seed=seed)
  first = mc_data.training_batches(load, config, tok, 0)
  b0, b1 = next(first), next(first)
  resumed = next(mc_data.training_batches(load, config, tok, 1))
  for key in b1:
    np.testing.assert_array_equal(resumed[key], b1[key], err_msg=key)
  fit = next(mc_data.mc_batches(load(config.data.seed), config, tok, 2))  # the same problems, scaled to fit
  np.testing.assert_array_equal(fit['input_ids'], b0['input_ids'])
  assert not np.array_equal(fit['images'], b0['images'])  # training draws a random scale and crop


# --- leaderboard file and predict.py -------------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
  """Plain numpy, over the last axis: the reference for the submission's probabilities."""
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def test_submission_csv_parses_back_to_the_predictions(tmp_path):
  rng = np.random.default_rng(0)
  preds, expected = [], {}
  for n in (10, 2, 0):
    annot_id = f'test-{n}'
    answer = rng.normal(size=4)
    rationales = rng.normal(size=(4, 4))
    preds.append(ft.Prediction(annot_id, 0, -1, answer))
    preds += [ft.Prediction(vcr.conditioned_id(annot_id, j), 1, -1, rationales[j]) for j in range(4)]
    expected[annot_id] = (_softmax(answer), _softmax(rationales))
  path = leaderboard.write_vcr_submission(preds, tmp_path / 'sub.csv')
  header = path.read_text().splitlines()[0].split(',')
  assert header[:6] == ['annot_id', 'answer_0', 'answer_1', 'answer_2', 'answer_3', 'rationale_conditioned_on_a0_0']
  assert header[-1] == 'rationale_conditioned_on_a3_3' and len(header) == 21
  back = leaderboard.read_vcr_submission(path)
  assert list(back) == ['test-0', 'test-2', 'test-10']  # test order
  for annot_id, (answer, rationale) in expected.items():
    np.testing.assert_allclose(back[annot_id][0], answer, rtol=1e-6)
    np.testing.assert_allclose(back[annot_id][1], rationale, rtol=1e-6)
  with pytest.raises(ValueError, match='lack a Q->A or a conditioned QA->R'):
    leaderboard.vcr_test_rows(preds[:-1])


@pytest.mark.slow
def test_predict_script_writes_val_predictions_summary_and_submission(release, tmp_path):
  root, tfds_dir = release
  texts = [vcr.render(t, OBJECTS) for t in [QUESTION, *ANSWERS, *RATIONALES]] + list(vcr.PROMPTS.values())
  (tmp_path / 'text.txt').write_text('\n'.join(texts * 5) + '\n')
  spm = train_sentencepiece([tmp_path / 'text.txt'], tmp_path / 'spm', 120, model_type='bpe')
  tok, config = load_tokenizer(spm), finetune_config()
  load = lambda seed: mc_data.load_problems('vcr', root, 'train', data_dir=tfds_dir, shuffle_seed=seed)
  ft.finetune(config, tmp_path / 'work', lambda s, p: mc_data.training_batches(load, config, tok, s),
              init_checkpoint=None, progress=False, devices=jax.devices()[:1])
  assert run_script('predict.py', f'--workdir={tmp_path / "work"}', f'--data_dir={root}', f'--tokenizer={spm}',
                    f'--tfds_data_dir={tfds_dir}', f'--out={tmp_path / "out"}') == 0
  out = tmp_path / 'out'
  summary = json.loads((out / 'summary.json').read_text())
  assert {k: v['chance'] for k, v in summary['accuracy'].items()} == {
      'answer_accuracy': 0.25, 'rationale_accuracy': 0.25, 'q_a': 0.25, 'qa_r': 0.25, 'q_ar': 0.0625}
  assert summary['skips']['val']['skipped']['truncated_jpeg'] == 1
  rows = [json.loads(line) for line in (out / 'val_predictions.jsonl').read_text().splitlines()]
  assert sorted(r['id'] for r in rows) == ['val-0', 'val-1']
  assert all(r['q_ar'] == (r['answer']['correct'] and r['rationale']['correct']) for r in rows)
  assert summary['accuracy']['q_ar']['value'] == np.mean([r['q_ar'] for r in rows])
  submission = leaderboard.read_vcr_submission(out / 'vcr_test_submission.csv')
  assert list(submission) == ['test-0', 'test-1']
  for answer, rationale in submission.values():
    np.testing.assert_allclose(answer.sum(), 1, rtol=1e-6)
    np.testing.assert_allclose(rationale.sum(1), 1, rtol=1e-6)
