"""Zero-shot story ordering: scoring and metrics against plain-numpy references written from the paper's
definitions, the 5-segment story config, and an end-to-end run of a tiny random model on synthetic stories."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merlot_jax.config import ConfigError, load_config
from merlot_jax.data.tokenizer import load_tokenizer
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.preprocess import synthetic
from merlot_jax.tasks import story_data
from merlot_jax.tasks import story_ordering as so
from tests.models.testlib import REPO, pure_params
from tests.script_runner import run_script
from tests.tasks.tiny_run import corpus_and_checkpoint, tiny_config

N = 5


# --- plain-numpy references ----------------------------------------------------------------------


def ref_scores(log_probs):
  """{ordering: score}; caption i happens at time i, the image in slot s at time order[s]; each of the
  25 (caption, image) pairs adds the log-probability of its relation: 1 same, 2 caption first, 3 image first."""
  out = {}
  for order in itertools.permutations(range(N)):
    total = 0.0
    for i in range(N):
      for s in range(N):
        relation = 1 if i == order[s] else 2 if i < order[s] else 3
        total += log_probs[i][s][relation]
    out[order] = total
  return out


def ref_spearman(pred, true):
  d = np.asarray(pred) - np.asarray(true)
  return 1 - 6 * np.sum(d ** 2) / (N * (N ** 2 - 1))


def random_log_probs(seed):
  logits = np.random.default_rng(seed).normal(size=(N, N, 4)) * 2
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


# --- scoring and metrics -------------------------------------------------------------------------


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_scores_match_the_reference_over_all_120_orders(seed):
  lp = random_log_probs(seed)
  ref = ref_scores(lp)
  best, scores = so.score_orderings(lp)
  assert scores.shape == (120,)
  np.testing.assert_allclose(scores, [ref[o] for o in itertools.permutations(range(N))], rtol=1e-12)
  ref_best = max(ref, key=ref.get)
  assert tuple(best) == ref_best
  assert scores.max() == pytest.approx(ref[ref_best], rel=1e-12)


def test_scores_recover_an_order_the_probabilities_agree_with():
  target = np.array([3, 0, 4, 1, 2])  # slot s happens at time target[s]
  probs = np.full((N, N, 4), 0.05)
  for i in range(N):
    for s in range(N):
      probs[i, s, 1 if i == target[s] else 2 if i < target[s] else 3] = 0.85
  best, _ = so.score_orderings(np.log(probs))
  np.testing.assert_array_equal(best, target)


@pytest.mark.parametrize('pred, true, expected', [
    ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], (1.0, 1.0, 0.0)),
    ([4, 3, 2, 1, 0], [0, 1, 2, 3, 4], (-1.0, 0.0, 12 / 5)),
    # one swap of neighbours: d^2 = 2 -> rho = 1 - 12/120; 9 of 10 pairs right; |d| = 2 over 5.
    ([1, 0, 2, 3, 4], [0, 1, 2, 3, 4], (0.9, 0.9, 0.4)),
    # the same story with its slots listed in another order gives the same metrics
    ([2, 3, 4, 0, 1], [2, 3, 4, 1, 0], (0.9, 0.9, 0.4)),
])
def test_metrics_on_hand_worked_examples(pred, true, expected):
  got = (so.spearman(pred, true), so.pairwise_accuracy(pred, true), so.mean_abs_distance(pred, true))
  np.testing.assert_allclose(got, expected, atol=1e-12)


def test_metrics_match_references_on_every_order():
  true = np.array([2, 0, 4, 1, 3])
  for pred in itertools.permutations(range(N)):
    pred = np.array(pred)
    assert so.spearman(pred, true) == pytest.approx(ref_spearman(pred, true), abs=1e-12)
    right = sum((pred[a] < pred[b]) == (true[a] < true[b]) for a, b in itertools.combinations(range(N), 2))
    assert so.pairwise_accuracy(pred, true) == pytest.approx(right / 10)
    assert so.mean_abs_distance(pred, true) == pytest.approx(np.abs(pred - true).sum() / N)


def test_metrics_reject_non_permutations():
  with pytest.raises(ValueError, match='permutation'):
    so.spearman([0, 0, 1, 2, 3], [0, 1, 2, 3, 4])


@pytest.mark.parametrize('n', [3, 5])
def test_random_baseline_matches_its_closed_form(n):
  base = so.random_baseline(n)
  assert base['spearman'] == pytest.approx(0.0, abs=1e-12)
  assert base['pairwise_accuracy'] == pytest.approx(0.5)
  # E|pi(k) - k| for a uniform permutation: pi(k) is uniform on 0..n-1, so the mean over k is
  # sum_{a,b} |a - b| / n^2 = (n^2 - 1) / (3n)  (1.6 for n = 5)
  assert base['mean_abs_distance'] == pytest.approx((n * n - 1) / (3 * n))


def test_unknown_image_index_is_an_offset_permutation():
  index = so.unknown_image_index(np.random.default_rng(0), 3, 2, N, 64)
  assert index.shape == (3, 2, N)
  np.testing.assert_array_equal(np.sort(index, -1), np.broadcast_to(64 + np.arange(N), (3, 2, N)))


# --- the 5-segment config ------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['tiny.py', 'base.py'])
def test_story_config_keeps_every_parameter_shape(name):
  config = load_config(REPO / 'configs' / name)
  story = so.story_config(config)
  assert (story.model.num_segments, story.model.segments_per_group) == (5, 5)
  assert (config.model.num_segments, config.model.segments_per_group) != (5, 5)  # the original is unchanged
  shapes = lambda c: jax.tree.map(lambda x: x.shape, nnx.state(
      nnx.eval_shape(lambda: MerlotModel(c.model, rngs=nnx.Rngs(params=0))), nnx.Param).to_pure_dict())
  assert shapes(story) == shapes(config)


def test_story_config_needs_room_for_the_unknown_rows():
  config = tiny_config()
  config.model.max_image_positions = 68
  with pytest.raises(ConfigError, match='max_image_positions'):
    so.story_config(config)


def test_pair_log_probs_needs_the_story_layout():
  model = nnx.eval_shape(lambda: MerlotModel(tiny_config().model, rngs=nnx.Rngs(params=0)))  # 4 segments, 2 per group
  with pytest.raises(ValueError, match='story_config'):
    so.pair_log_probs(model, jnp.zeros((1, 4, 64, 96, 3)), jnp.zeros((1, 4, 8), jnp.int32),
                      jnp.zeros((1, 2, 2), jnp.int32))


# --- end to end on a tiny random model -----------------------------------------------------------


@pytest.fixture(scope='module')
def story_run(tmp_path_factory):
  """A tiny random model saved as a params checkpoint of the pretraining layout, reloaded as the
  story model, and 2 synthetic stories."""
  tmp = tmp_path_factory.mktemp('story')
  spm, _, pretrained = corpus_and_checkpoint(tmp, 3, synthetic.Config(min_events=5, max_events=6, num_stories=2), 1)
  model, story = so.load_story_model(tmp / 'ckpt')
  stories = story_data.load_stories(f'synthetic:{tmp / "corpus"}')
  batches = list(story_data.story_batches(stories, story, load_tokenizer(spm), batch_size=2, seed=0))
  return {'tmp': tmp, 'spm': spm, 'pretrained': pretrained, 'model': model, 'batches': batches}


def test_story_model_has_the_checkpoint_params(story_run):
  model = story_run['model']
  assert model.config.num_segments == model.config.segments_per_group == 5
  jax.tree.map(np.testing.assert_array_equal, pure_params(model), pure_params(story_run['pretrained']))


def test_end_to_end_gives_valid_orders_and_finite_metrics(story_run):
  predictions = so.evaluate(story_run['model'], story_run['batches'], seed=0)
  assert [p.story_id for p in predictions] == ['story-0000', 'story-0001']
  for p in predictions:
    assert sorted(p.predicted_position.tolist()) == list(range(N))
    assert sorted(p.true_position.tolist()) == list(range(N))
    assert p.scores.shape == (120,) and np.all(np.isfinite(p.scores)) and np.all(p.scores < 0)
  metrics = so.summarize(predictions)
  assert set(metrics) == set(so.METRICS) and all(math.isfinite(v) for v in metrics.values())


def test_pair_log_probs_follow_the_images_not_their_slots(story_run):
  """Only the image-index rows tell images apart: moving images (with their rows) to other slots moves
  the columns of the pair probabilities and changes nothing else."""
  model, batch = story_run['model'], story_run['batches'][0]
  images, ids = jnp.asarray(batch['images']), jnp.asarray(batch['input_ids'])
  index = so.unknown_image_index(np.random.default_rng(0), images.shape[0])
  forward = so.jitted_pair_log_probs  # compiled once for the module's tests (same shapes)
  lp = np.asarray(forward(model, images, ids, jnp.asarray(index)))
  assert lp.shape == (2, N, N, 4)
  np.testing.assert_allclose(np.exp(lp).sum(-1), 1, atol=1e-5)
  perm = np.array([2, 4, 0, 1, 3])
  moved = np.asarray(forward(model, images[:, perm], ids, jnp.asarray(index[:, :, perm])))
  np.testing.assert_allclose(moved, lp[:, :, perm], atol=1e-4)


def test_script_prints_the_metrics_next_to_the_baseline(story_run, capsys):
  tmp = story_run['tmp']
  assert run_script('story_ordering.py', '--checkpoint', tmp / 'ckpt', '--data', f'synthetic:{tmp / "corpus"}',
                    '--tokenizer', story_run['spm'], '--limit', 2, '--batch_size', 2) == 0
  metrics = so.summarize(so.evaluate(story_run['model'], story_run['batches'], seed=0))  # the same 2 stories
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == f'story ordering: 2 stories from synthetic:{tmp / "corpus"}'
  assert lines[1].split() == ['metric', 'model', 'random']
  baseline = so.random_baseline()
  for line, name in zip(lines[2:], so.METRICS, strict=True):
    label, model_value, random_value = line.split()
    assert label == name and not random_value.startswith('-0.0000')
    np.testing.assert_allclose([float(model_value), float(random_value)], [metrics[name], baseline[name]],
                               atol=5e-5)
