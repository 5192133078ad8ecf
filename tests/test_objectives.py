"""Objectives: golden TF outputs, plain-numpy references, and masking statistics."""

import functools
import math

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from merlot_jax.config import default_config
from merlot_jax.models.heads import pairwise_concat
from merlot_jax.models.merlot import segment_first_tokens
from merlot_jax.pretraining import objectives

RTOL = 1e-5
F32 = np.float32


def _cfg(**overrides):
  cfg = default_config().objectives
  for k, v in overrides.items():
    setattr(cfg, k, v)
  return cfg


# ----------------------------------------------------------------------------------------------
# Plain-numpy references.


def np_ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(-1, keepdims=True)
  log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, np.asarray(labels)[..., None], -1)[..., 0]


def np_mask_positions(ids, attention, gumbel, lower, upper, cfg):
  """Loop-by-loop transcription of the original's mask_inputs (float32 where the original is)."""
  g_count, seq_len = ids.shape
  k, num_top = int(seq_len * cfg.mask_rate), int(seq_len * cfg.mask_topk_fraction)
  f, p = cfg.mask_topk_fraction, cfg.mask_topk_prob
  topk_val = 0.01 * p * (1 - f) / (f * (1 - p))
  out = np.zeros((g_count, k), np.int64)
  for g in range(g_count):
    special = ids[g] < 100
    if cfg.mask_use_attention:
      summs = np.where(special, F32(0), attention[g].astype(F32))
      top = np.argsort(-summs, kind='stable')[:num_top]  # ties: lower position first, like top_k
      weight = np.full(seq_len, F32(0.01), F32)
      weight[top] = F32(topk_val - 0.01) + F32(0.01)
    else:
      weight = np.ones(seq_len, F32)
    log_weight = np.log(weight) - F32(1e8) * special.astype(F32)
    picks = np.argsort(-(log_weight + gumbel[g]), kind='stable')[:k][::-1]
    pos = np.arange(seq_len)
    covers = (picks - lower[g] <= pos[:, None]) & (pos[:, None] <= picks + upper[g])  # [L, K]
    first_cover = np.array([np.flatnonzero(c)[0] if c.any() else 0 for c in covers], F32)
    score = np.where(special, F32(0), first_cover) + F32(0.5) * weight / weight.max()
    out[g] = np.sort(np.argsort(-score, kind='stable')[:k])
  return out


def random_groups(rng, g_count, seg_count=4, seg_len=8, min_valid=0):
  """[G, seg_count * seg_len] ids: START then ids >= 100 then padding in each segment."""
  ids = np.zeros((g_count, seg_count, seg_len), np.int32)
  ids[:, :, 0] = 2
  lengths = rng.integers(min_valid, seg_len, size=(g_count, seg_count))
  body = rng.integers(100, 512, size=(g_count, seg_count, seg_len))
  keep = np.arange(seg_len) <= lengths[..., None]
  ids[:, :, 1:] = np.where(keep[..., 1:], body[..., 1:], 0)
  return ids.reshape(g_count, -1)


def run_lengths(masked_idx):
  """Distribution of the lengths 1..11 of maximal runs of consecutive masked positions."""
  lengths = []
  for row in masked_idx:
    breaks = np.flatnonzero(np.diff(row) != 1) + 1
    lengths.extend(np.diff(np.concatenate([[0], breaks, [len(row)]])))
  return np.bincount(lengths, minlength=12)[1:12] / len(lengths)


# ----------------------------------------------------------------------------------------------
# Golden TF outputs.


@pytest.fixture(scope='module')
def golden(golden_dir):
  inputs, outputs = np.load(golden_dir / 'inputs.npz'), np.load(golden_dir / 'outputs.npz')
  return {**{k: inputs[k] for k in inputs}, **{k: outputs[k] for k in outputs}}


def test_golden_temporal(golden):
  video = golden['video_src_ids'].reshape(4, 2)
  image_index = golden['shuffled_idx_img'].reshape(4, 2)
  np.testing.assert_array_equal(objectives.temporal_labels(video), golden['temporal_labels'])
  total, info = objectives.temporal_objective(golden['temporal_logits_lang_viz'],
                                              golden['temporal_logits_viz_viz'], video, image_index, _cfg())
  for name in ('lang_viz_loss', 'lang_viz_acc', 'viz_viz_loss', 'viz_viz_acc', 'loss'):
    np.testing.assert_allclose(info[name], golden[f'temporal_info_{name}'], rtol=RTOL, err_msg=name)
  np.testing.assert_allclose(total, golden['temporal_loss'], rtol=RTOL)


def test_golden_contrastive(golden):
  loss, info = objectives.contrastive_loss(golden['contrastive_lang_proj'], golden['contrastive_viz_proj'],
                                           temperature=0.05, weight=0.25)
  np.testing.assert_allclose(loss, golden['contrastive_loss_all'], rtol=RTOL)
  for name in ('lang_to_viz', 'viz_to_lang'):
    np.testing.assert_allclose(info[name], golden[f'contrastive_loss_{name}'], rtol=RTOL)


def test_golden_first_tokens(golden):
  np.testing.assert_array_equal(segment_first_tokens(golden['encoder_hidden_lang'], 2),
                                golden['temporal_h_lang'])
  np.testing.assert_array_equal(segment_first_tokens(golden['encoder_hidden_viz'], 2),
                                golden['temporal_h_viz'])
  lang_trg = segment_first_tokens(golden['langonly_hidden'], 4).reshape(8, 64)
  np.testing.assert_array_equal(lang_trg, golden['lang_trg_h'])


def _np_gelu(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _np_layer_norm(x, gamma, beta):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * gamma + beta


def test_golden_pairwise_concat_feeds_temporal_head(golden, golden_dir):
  """The golden temporal head, written in numpy, on pairwise_concat gives the golden logits."""
  variables = np.load(golden_dir / 'variables.npz')
  for name, xa, xb in (('lang_viz', 'temporal_h_lang', 'temporal_h_viz'),
                       ('viz_viz', 'temporal_h_viz', 'temporal_h_viz')):
    v = {k.split('/', 1)[1]: variables[k].astype(np.float64) for k in variables
         if k.startswith(f'{name}_temporal/')}
    x = np.asarray(pairwise_concat(golden[xa], golden[xb]), np.float64)
    h = _np_gelu(x @ v['intermediate/kernel'] + v['intermediate/bias'])
    h = _np_layer_norm(h, v['LayerNorm_ln0/gamma'], v['LayerNorm_ln0/beta'])
    logits = h @ v['logits/kernel'] + v['logits/bias']
    np.testing.assert_allclose(logits, golden[f'temporal_logits_{name}'], rtol=1e-4, atol=1e-5)


def test_golden_masked_lm(golden, golden_dir):
  """masked_lm_objective with the golden LM head written in numpy gives train/mask_loss and mask_acc."""
  v = {k: a.astype(np.float64) for k, a in np.load(golden_dir / 'variables.npz').items()}

  def lm_head(h):
    h = _np_gelu(np.asarray(h, np.float64) @ v['lm_head/projection/kernel'] + v['lm_head/projection/bias'])
    h = _np_layer_norm(h, v['lm_head/LayerNorm/gamma'], v['lm_head/LayerNorm/beta'])
    return (h @ v['word_embeddings/word_embeddings'].T + v['lm_head/output_bias']).astype(F32)

  loss, acc = objectives.masked_lm_objective(golden['train/lang_hidden_masked'], golden['train/masked_idx'],
                                             golden['input_ids'].reshape(4, 16), lm_head)
  np.testing.assert_allclose(loss, golden['train/mask_loss'], rtol=RTOL)
  np.testing.assert_allclose(acc, golden['train/mask_acc'], atol=1e-6)


def test_golden_masked_ids_consistent(golden):
  ids, masked = golden['input_ids'].reshape(4, 16), golden['train/masked_ids'].reshape(4, 16)
  masked_idx = golden['train/masked_idx']
  assert masked_idx.shape == (4, int(16 * 0.2))
  np.testing.assert_array_equal(np.sort(masked_idx, 1), masked_idx)
  is_masked = np.zeros_like(ids, bool)
  np.put_along_axis(is_masked, masked_idx, True, 1)
  np.testing.assert_array_equal(masked[~is_masked], ids[~is_masked])
  assert np.all(ids[is_masked] >= 100)
  new = masked[is_masked]
  assert np.all((new == ids[is_masked]) | (new == 1) | (new >= 100))
  # replace_masked with 'random' everywhere reproduces the golden draw where it used the random id.
  option = np.where(masked == 1, 1, np.where(masked != ids, 2, 0))
  np.testing.assert_array_equal(objectives.replace_masked(ids, masked_idx, option, masked), masked)


def test_golden_attention_received(golden):
  probs = golden['langonly_attn_probs_headmean']  # [videos=2, layers=2, q=32, k=32]
  received = objectives.attention_received(probs)
  # Every query's probabilities sum to 1, so a video's keys receive layers * queries in total.
  np.testing.assert_allclose(received.sum(-1), [64.0, 64.0], rtol=1e-5)
  groups = objectives.video_to_groups(received, 16)
  assert groups.shape == (4, 16)
  for g in range(4):
    np.testing.assert_allclose(groups[g], probs[g // 2, :, :, (g % 2) * 16:(g % 2 + 1) * 16].sum((0, 1)),
                               rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Losses against numpy.


def test_contrastive_matches_numpy():
  rng = np.random.default_rng(0)
  lang, viz = rng.normal(size=(2, 12, 16))
  lang /= np.linalg.norm(lang, axis=-1, keepdims=True)
  viz /= np.linalg.norm(viz, axis=-1, keepdims=True)
  loss, info = objectives.contrastive_loss(lang.astype(F32), viz.astype(F32), temperature=0.07, weight=0.3)
  l2v = np_ce(lang @ viz.T / 0.07, np.arange(12)).mean()
  v2l = np_ce(viz @ lang.T / 0.07, np.arange(12)).mean()
  np.testing.assert_allclose(info['lang_to_viz'], l2v, rtol=RTOL)
  np.testing.assert_allclose(info['viz_to_lang'], v2l, rtol=RTOL)
  np.testing.assert_allclose(loss, 0.3 * (l2v + v2l) / 2, rtol=RTOL)


def test_center_projections_matches_numpy():
  x = np.random.default_rng(2).normal(size=(10, 6))
  centered = x - x.mean(axis=0)
  np.testing.assert_allclose(objectives.center_projections(x.astype(F32)),
                             centered / np.linalg.norm(centered, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_center_projections_recovers_matches_hidden_under_a_shared_direction():
  """Rows that are one shared unit vector plus 1% of a per-row part that matches across the two sides:
  InfoNCE on them is ln(N) to within 0.05 (the matching part enters the logits at second order), and
  after centering it is far below ln(N)."""
  rng = np.random.default_rng(3)
  n, c = 64, 32
  shared, own = rng.normal(size=c), rng.normal(size=(n, c))
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  lang = unit(unit(shared) + 0.01 * unit(own + 0.3 * rng.normal(size=(n, c)))).astype(F32)
  viz = unit(unit(shared) + 0.01 * unit(own + 0.3 * rng.normal(size=(n, c)))).astype(F32)
  plain = objectives.contrastive_loss(lang, viz, 0.05, 1.0)[0]
  centered = objectives.contrastive_loss(objectives.center_projections(lang), objectives.center_projections(viz),
                                         0.05, 1.0)[0]
  assert abs(plain - math.log(n)) < 0.05
  assert centered < 0.1 * math.log(n)


@pytest.mark.parametrize('k', [1, 3, 10])
def test_retrieval_top_k_accuracy_matches_numpy_ranks(k):
  rng = np.random.default_rng(4)
  queries, keys = rng.normal(size=(2, 40, 8))
  keys[:10] = queries[:10]  # so that top-1 is not all misses
  scores = queries @ keys.T
  own_rank = np.array([list(np.argsort(-row)).index(i) for i, row in enumerate(scores)])
  np.testing.assert_allclose(objectives.retrieval_top_k_accuracy(queries.astype(F32), keys.astype(F32), k),
                             np.mean(own_rank < k), rtol=1e-6)


@pytest.mark.parametrize('center', [False, True])
def test_contrastive_sharded_equals_unsharded(center):
  """Rows sharded over 8 devices: jit adds the all-gather of the negatives (and the batch mean when
  centering), the value is unchanged."""
  rng = np.random.default_rng(1)
  lang, viz = rng.normal(size=(2, 32, 8)).astype(F32)
  mesh = Mesh(np.asarray(jax.devices()), ('data',))  # auto axes, as sharding.make_mesh
  shard = NamedSharding(mesh, PartitionSpec('data'))
  prepare = objectives.center_projections if center else (lambda x: x)
  fn = jax.jit(lambda a, b: objectives.contrastive_loss(prepare(a), prepare(b), 0.05, 0.25)[0])
  sharded = fn(jax.device_put(lang, shard), jax.device_put(viz, shard))
  np.testing.assert_allclose(sharded, fn(lang, viz), rtol=1e-6)


def test_masked_lm_loss_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(3, 5, 40)).astype(F32)
  targets = rng.integers(0, 40, size=(3, 5)).astype(np.int32)
  targets[0, :2] = 0
  targets[1, 0] = logits[1, 0].argmax()  # at least one right answer
  loss, acc = objectives.masked_lm_loss(logits, targets)
  valid = targets != 0
  np.testing.assert_allclose(loss, (np_ce(logits, targets) * valid).sum() / (valid.sum() + 1e-5), rtol=RTOL)
  right = (logits.argmax(-1) == targets) & valid
  np.testing.assert_allclose(acc, right.sum() / (valid.sum() + 1e-5), rtol=RTOL)


def test_masked_lm_objective_gathers_hidden_and_targets():
  rng = np.random.default_rng(3)
  hidden = rng.normal(size=(2, 10, 6)).astype(F32)
  ids = rng.integers(100, 300, size=(2, 10)).astype(np.int32)
  ids[1, 7] = 0
  masked_idx = np.array([[1, 4, 8], [0, 7, 9]], np.int32)
  head = rng.normal(size=(6, 300)).astype(F32)
  loss, acc = objectives.masked_lm_objective(hidden, masked_idx, ids, lambda h: h @ head)
  rows = np.arange(2)[:, None]
  logits, targets = hidden[rows, masked_idx] @ head, ids[rows, masked_idx]
  valid = targets != 0
  np.testing.assert_allclose(loss, (np_ce(logits, targets) * valid).sum() / (valid.sum() + 1e-5), rtol=RTOL)
  np.testing.assert_allclose(acc, ((logits.argmax(-1) == targets) & valid).sum() / (valid.sum() + 1e-5))


def test_temporal_loss_matches_numpy():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(18, 4)).astype(F32)
  labels = rng.integers(0, 4, size=18).astype(np.int32)
  weights = rng.choice([0.01, 1.0], size=18).astype(F32)
  loss, acc = objectives.temporal_loss(logits, labels, weights)
  np.testing.assert_allclose(loss, (np_ce(logits, labels) * weights).mean(), rtol=RTOL)
  right = logits.argmax(-1) == labels
  np.testing.assert_allclose(acc, (right * weights).sum() / (weights.sum() + 1e-5), rtol=RTOL)


def test_temporal_labels_weights_and_pairs_numpy():
  video = np.array([[0, 0, 1], [5, 5, 5]], np.int32)
  index = np.array([[0, 1, 2], [17, 16, 18]], np.int32)
  n = 3
  want_labels, want_original, want_intended, want_pairs = [], [], [], []
  xa, xb = np.arange(2 * n * 2).reshape(2, n, 2), -np.arange(2 * n * 2).reshape(2, n, 2)
  for g in range(2):
    for i in range(n):
      for j in range(n):
        order = 1 if i == j else (2 if i < j else 3)
        want_labels.append(order if video[g, i] == video[g, j] else 0)
        want_original.append(0.01)  # every index < 64
        want_intended.append(0.01 if index[g, i] < 16 and index[g, j] < 16 else 1.0)
        want_pairs.append(np.concatenate([xa[g, i], xb[g, j]]))
  np.testing.assert_array_equal(objectives.temporal_labels(video), want_labels)
  np.testing.assert_allclose(objectives.temporal_pair_weights(index, 'original', 0.01, 16), want_original)
  np.testing.assert_allclose(objectives.temporal_pair_weights(index, 'intended', 0.01, 16), want_intended)
  np.testing.assert_array_equal(pairwise_concat(xa, xb), np.stack(want_pairs))


# ----------------------------------------------------------------------------------------------
# Masking.


@pytest.mark.parametrize('overrides', [
    {},
    {'mask_span_probs': (1.0, 0.0, 0.0)},
    {'mask_use_attention': False},
    {'mask_rate': 0.3, 'mask_topk_fraction': 0.1, 'mask_topk_prob': 0.7},
])
def test_mask_positions_match_numpy_transcription(overrides):
  """Same noise in, same positions out, including rows with fewer ordinary tokens than K."""
  cfg = _cfg(**overrides)
  rng = np.random.default_rng(5)
  ids = random_groups(rng, 200)
  ids[:10, :] = np.where(np.arange(32) % 8 == 0, 2, 0)  # nothing but START and padding
  ids[10:20, 3:] = 0  # two ordinary tokens
  k = int(32 * cfg.mask_rate)
  attention = np.round(rng.uniform(size=ids.shape), 1).astype(F32)  # rounding makes ties
  gumbel = rng.gumbel(size=ids.shape).astype(F32)
  lower, upper = rng.integers(0, 3, size=(2, 200, k)).astype(np.int32)
  fn = jax.jit(lambda *a: objectives.mask_positions(*a, cfg))
  got = fn(ids, attention if cfg.mask_use_attention else None, gumbel, lower, upper)
  np.testing.assert_array_equal(got, np_mask_positions(ids, attention, gumbel, lower, upper, cfg))


@pytest.fixture(scope='module')
def many_groups():
  rng = np.random.default_rng(6)
  seg = np.array([2, 101, 102, 103, 104, 105, 0, 0], np.int32)  # 20 ordinary tokens of 32
  ids = np.tile(np.tile(seg, 4), (2000, 1)) + rng.integers(0, 300, size=(2000, 32)) * (np.tile(seg, 4) >= 100)
  attention = rng.uniform(size=ids.shape).astype(F32)
  return ids.astype(np.int32), attention


@functools.cache
def _span_mask_fn(span_probs):
  cfg = _cfg(mask_span_probs=span_probs)
  return jax.jit(lambda r, i, a: objectives.span_mask(r, i, a, cfg, 512))


def _span_mask(ids, attention, seed, span_probs=(0.625, 0.25, 0.125)):
  """(masked_ids, masked_idx) as numpy; one compilation per span setting."""
  return tuple(np.asarray(x) for x in _span_mask_fn(span_probs)(jax.random.key(seed), ids, attention))


def test_span_mask_structure_and_replacement(many_groups):
  ids, attention = many_groups
  masked, idx = _span_mask(ids, attention, seed=0)
  k = int(32 * 0.2)
  assert idx.shape == (2000, k)
  assert np.all(np.diff(idx, axis=1) > 0)  # sorted and distinct
  rows = np.arange(2000)[:, None]
  # With mask_rate == mask_topk_fraction the most-attended set always tops up the picks, so a
  # special token (< 100, incl. padding) is never masked when a group has >= K ordinary tokens.
  assert np.all(ids[rows, idx] >= 100)
  is_masked = np.zeros(ids.shape, bool)
  np.put_along_axis(is_masked, idx, True, 1)
  np.testing.assert_array_equal(masked[~is_masked], ids[~is_masked])
  new, old = masked[is_masked], ids[is_masked]
  np.testing.assert_allclose(np.mean(new == 1), 0.8, atol=0.02)
  np.testing.assert_allclose(np.mean(new == old), 0.1 + 0.1 / 412, atol=0.02)
  assert np.all((new == 1) | (new == old) | ((new >= 100) & (new < 512)))
  np.testing.assert_allclose(np.mean((new != old) & (new != 1)), 0.1 * 411 / 412, atol=0.02)


def _expected_top_picks(n_top, n_other, w_top, w_other, draws):
  """E[# top-set tokens] in `draws` weighted draws without replacement (sequential sampling)."""
  probs = {0: 1.0}  # top picks so far -> probability
  for d in range(draws):
    nxt = {}
    for t, p in probs.items():
      top_mass, other_mass = (n_top - t) * w_top, (n_other - (d - t)) * w_other
      p_top = top_mass / (top_mass + other_mass)
      nxt[t + 1] = nxt.get(t + 1, 0.0) + p * p_top
      nxt[t] = nxt.get(t, 0.0) + p * (1 - p_top)
    probs = nxt
  return sum(t * p for t, p in probs.items())


def test_span_mask_top_set_fraction(many_groups):
  """No span extension: the first K-1 Gumbel picks are weighted draws without replacement; the last one
  scores 0 like every uncovered token, so the tie-break picks the lowest unpicked most-attended token."""
  ids, attention = many_groups
  cfg = _cfg(mask_span_probs=(1.0, 0.0, 0.0))
  _, idx = _span_mask(ids, attention, seed=1, span_probs=cfg.mask_span_probs)
  k = n_top = 6
  f, p = cfg.mask_topk_fraction, cfg.mask_topk_prob
  w_top = 0.01 * p * (1 - f) / (f * (1 - p))
  assert math.isclose(w_top * f / (w_top * f + 0.01 * (1 - f)), p)  # one draw over ordinary tokens
  expected = (_expected_top_picks(n_top, 20 - n_top, w_top, 0.01, k - 1) + 1) / k
  top = np.argsort(-np.where(ids >= 100, attention, 0), axis=1, kind='stable')[:, :n_top]
  is_top = (idx[:, :, None] == top[:, None, :]).any(-1)
  np.testing.assert_allclose(is_top.mean(), expected, atol=0.015)
  naive = _expected_top_picks(n_top, 20 - n_top, w_top, 0.01, k) / k  # K plain draws: a different number
  assert abs(naive - expected) > 0.05


def test_span_mask_run_lengths_match_numpy_simulation(many_groups):
  ids, attention = many_groups
  cfg = _cfg()
  _, idx = _span_mask(ids, attention, seed=2)
  rng = np.random.default_rng(7)
  k = int(32 * cfg.mask_rate)
  n = 1000
  lower, upper = rng.choice(3, p=cfg.mask_span_probs, size=(2, n, k))
  sim = np_mask_positions(ids[:n], attention[:n], rng.gumbel(size=(n, 32)).astype(F32), lower, upper, cfg)
  got, want = run_lengths(idx), run_lengths(sim)
  assert 0.5 * np.abs(got - want).sum() < 0.06, (got, want)
  # Spans make masks cluster: longer runs than the single-token picks of the no-span setting.
  _, single = _span_mask(ids, attention, seed=3, span_probs=(1.0, 0.0, 0.0))
  lengths = np.arange(1, 12)
  assert (got * lengths).sum() > (run_lengths(single) * lengths).sum() + 0.3
