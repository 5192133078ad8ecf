"""MERLOT's pretraining objectives as pure functions of arrays (no model code).

The math follows the original TF implementation (rowanz/merlot, model/modeling.py: `mask_inputs`,
`mask_loss`, `contrastive_loss`, `allpairs_temporal_logits`, `allpairs_temporal_labels`,
`temporal_loss`). Shapes use these letters:
  G  groups (videos x groups per video), L language tokens per group, K masked tokens per group,
  n  segments per group, H hidden size, C contrastive size, V vocabulary, N segments in the global batch.
Everything is jit-able and written for global arrays: under jit with sharded inputs XLA inserts the
collectives (e.g. the all-gather of the contrastive negatives), so no axis names appear here.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

from merlot_jax.config import CHOICES, UNKNOWN_POSITION_ROW
from merlot_jax.models.layers import l2_normalize
from merlot_jax.special_tokens import MASK, NUM_SPECIAL

_NONTOPK_WEIGHT = 0.01  # the original's weight of a token outside the most-attended set


# ----------------------------------------------------------------------------------------------
# Masking.


def attention_received(attn_probs: jax.Array) -> jax.Array:
  """Attention each key receives: [B, layers, q, k] head-mean probabilities -> [B, k].

  The original sums the language-only pass's probabilities over layers and queries
  (`reduce_sum(self_attn_probs, [1, 2])`), so this is a per-key total, not a per-query one.
  """
  chex.assert_rank(attn_probs, 4)
  return jnp.sum(attn_probs.astype(jnp.float32), axis=(1, 2))


def video_to_groups(x: jax.Array, group_len: int) -> jax.Array:
  """[B, T] per-video values (T = segments * segment_length) -> [B * T / group_len, group_len].

  The language-only pass runs over the whole video while masking works per joint-encoder group; the
  groups are consecutive runs of segments, so this is the original's plain reshape.
  """
  chex.assert_rank(x, 2)
  if x.shape[1] % group_len:
    raise ValueError(f'video length {x.shape[1]} is not a multiple of the group length {group_len}')
  return x.reshape(-1, group_len)


def _mask_sizes(seq_len: int, cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """(K tokens to mask, size of the most-attended set), truncated with int() as the original."""
  num_to_mask, num_topk = int(seq_len * cfg.mask_rate), int(seq_len * cfg.mask_topk_fraction)
  if num_to_mask < 1 or num_topk < 1:
    raise ValueError(f'objectives.mask_rate = {cfg.mask_rate} and objectives.mask_topk_fraction = '
                     f'{cfg.mask_topk_fraction} must each pick at least one of the {seq_len} tokens')
  return num_to_mask, num_topk


def _mask_weights(is_special: jax.Array, attention: jax.Array | None, num_topk: int,
                  cfg: ml_collections.ConfigDict) -> jax.Array:
  """[G, L] sampling weights: topk_val on the most-attended non-special tokens, 0.01 elsewhere.

  topk_val is chosen so that a single draw over all-ordinary tokens hits the top set with probability
  mask_topk_prob: p = topk_val * f / (topk_val * f + 0.01 * (1 - f)), f = mask_topk_fraction.
  """
  if not cfg.mask_use_attention:
    return jnp.ones(is_special.shape, jnp.float32)
  f, p = cfg.mask_topk_fraction, cfg.mask_topk_prob
  topk_val = _NONTOPK_WEIGHT * p * (1.0 - f) / (f * (1.0 - p))
  summs = attention * (1.0 - is_special)
  _, top = jax.lax.top_k(summs, num_topk)
  is_top = jnp.any(top[:, :, None] == jnp.arange(summs.shape[1]), axis=1).astype(jnp.float32)
  return is_top * jnp.float32(topk_val - _NONTOPK_WEIGHT) + jnp.float32(_NONTOPK_WEIGHT)


def mask_positions(input_ids: jax.Array, attention: jax.Array | None, gumbel: jax.Array,
                   extra_lower: jax.Array, extra_upper: jax.Array,
                   cfg: ml_collections.ConfigDict) -> jax.Array:
  """The deterministic part of the original's masking: noise in, sorted [G, K] positions out.

  Args:
    input_ids: [G, L] int32 group token ids.
    attention: [G, L] attention received (see `attention_received`), or None if not
      cfg.mask_use_attention.
    gumbel: [G, L] standard Gumbel noise (sampling K positions without replacement).
    extra_lower, extra_upper: [G, K] int32 span extension to the left / right of each pick.
    cfg: config.objectives.

  Gumbel top-K over log(weight) - 1e8 * special gives K picks, reversed so that the least likely pick
  comes first. Pick k's span covers [idx_k - lower_k, idx_k + upper_k]; each token is scored by the
  first (lowest k) span covering it (0 if none, so span 0 counts as uncovered), 0 on special tokens,
  plus 0.5 * weight / max weight to break ties in favour of the most-attended tokens; the K highest
  scores (lowest position first among equal scores) are masked.

  Consequences of the original's design, kept on purpose: the least likely pick's own position scores 0,
  so when the spans cover fewer than K tokens the rest are filled by the tie-break (most-attended first,
  then lowest position), not at random. With mask_use_attention and mask_topk_fraction >= mask_rate the
  top set always suffices, so special tokens are never masked in groups with >= K ordinary tokens;
  without attention the fill starts at position 0 (the START token): ~10% of groups in the tests' layout.
  """
  chex.assert_rank(input_ids, 2)
  g, seq_len = input_ids.shape
  num_to_mask, num_topk = _mask_sizes(seq_len, cfg)
  chex.assert_shape(gumbel, (g, seq_len))
  chex.assert_shape([extra_lower, extra_upper], (g, num_to_mask))
  if attention is not None:
    chex.assert_shape(attention, (g, seq_len))
  is_special = (input_ids < NUM_SPECIAL).astype(jnp.float32)
  weight = _mask_weights(is_special, attention, num_topk, cfg)

  log_weight = jnp.log(weight) - 1e8 * is_special
  _, picks = jax.lax.top_k(log_weight + gumbel, num_to_mask)
  picks = picks[:, ::-1]

  position = jnp.arange(seq_len)
  covers = ((position >= (picks - extra_lower)[:, :, None])
            & (position <= (picks + extra_upper)[:, :, None]))  # [G, K, L]
  score = jnp.argmax(covers, axis=1).astype(jnp.float32) * (1.0 - is_special)
  # The original divides by the max over the whole batch; every row holds the same two weight values
  # (num_topk top tokens, the rest not), so the row max is the same number and needs no collective.
  score = score + 0.5 * weight / jnp.max(weight, axis=1, keepdims=True)
  _, masked_idx = jax.lax.top_k(score, num_to_mask)
  return jnp.sort(masked_idx, axis=1).astype(jnp.int32)


def replace_masked(input_ids: jax.Array, masked_idx: jax.Array, option: jax.Array,
                   random_ids: jax.Array) -> jax.Array:
  """[G, L] ids with each masked position kept (option 0), MASK (1) or random_ids (2)."""
  chex.assert_rank([input_ids, masked_idx], 2)
  chex.assert_equal_shape([input_ids, option, random_ids])
  is_masked = jnp.any(masked_idx[:, :, None] == jnp.arange(input_ids.shape[1]), axis=1)
  option = jnp.where(is_masked, option, 0)
  return jnp.select([option == 1, option == 2], [jnp.full_like(input_ids, MASK), random_ids],
                    input_ids).astype(input_ids.dtype)


def span_mask(rng: jax.Array, input_ids: jax.Array, attention: jax.Array | None,
              cfg: ml_collections.ConfigDict, vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """The original's `mask_inputs`: SpanBERT-style masking guided by the language-only attention.

  Args:
    rng: PRNG key.
    input_ids: [G, L] int32 group token ids (`video_to_groups` of the video's ids).
    attention: [G, L] float32 attention received, or None when not cfg.mask_use_attention.
    cfg: config.objectives (mask_rate, mask_use_attention, mask_topk_fraction, mask_topk_prob,
      mask_span_probs, mask_replace_probs).
    vocab_size: random replacements are drawn from [100, vocab_size).

  Returns:
    masked_ids [G, L] (the model input) and masked_idx [G, K] (sorted positions, K = int(L * mask_rate)).
  """
  chex.assert_rank(input_ids, 2)
  g, seq_len = input_ids.shape
  num_to_mask, _ = _mask_sizes(seq_len, cfg)
  k_gumbel, k_lower, k_upper, k_option, k_random = jax.random.split(rng, 5)
  span_logits = jnp.log(jnp.asarray(cfg.mask_span_probs, jnp.float32))
  masked_idx = mask_positions(
      input_ids, attention,
      jax.random.gumbel(k_gumbel, (g, seq_len), jnp.float32),
      jax.random.categorical(k_lower, span_logits, shape=(g, num_to_mask)),
      jax.random.categorical(k_upper, span_logits, shape=(g, num_to_mask)),
      cfg)
  replace_logits = jnp.log(jnp.asarray(cfg.mask_replace_probs, jnp.float32))
  option = jax.random.categorical(k_option, replace_logits, shape=(g, seq_len))
  random_ids = jax.random.randint(k_random, (g, seq_len), NUM_SPECIAL, vocab_size, input_ids.dtype)
  return replace_masked(input_ids, masked_idx, option, random_ids), masked_idx


# ----------------------------------------------------------------------------------------------
# Masked language modelling.


def gather_masked(x: jax.Array, masked_idx: jax.Array) -> jax.Array:
  """x [G, L, ...] at the masked positions -> [G, K, ...] (hidden states or target ids)."""
  chex.assert_rank(masked_idx, 2)
  chex.assert_equal_shape_prefix([x, masked_idx], 1)
  idx = masked_idx.reshape(masked_idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-row CE in float32: logits [..., classes], labels [...] int -> [...]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def masked_lm_loss(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The original's mask_loss on [G, K, V] logits and [G, K] original ids -> (loss, accuracy).

  Targets equal to 0 (padding) are ignored; both averages divide by (their count + 1e-5).
  """
  chex.assert_rank(logits, 3)
  chex.assert_shape(targets, logits.shape[:2])
  valid = (targets != 0).astype(jnp.float32)
  denom = jnp.sum(valid) + 1e-5
  loss = jnp.sum(valid * _cross_entropy(logits, targets)) / denom
  right = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return loss, jnp.sum(valid * right) / denom


def masked_lm_objective(hidden: jax.Array, masked_idx: jax.Array, input_ids: jax.Array,
                        lm_head: Callable[[jax.Array], jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(loss, acc) from joint-encoder states [G, L, H] of the masked input and the original ids [G, L].

  lm_head maps [G, K, H] -> [G, K, V]. With the golden `train/lang_hidden_masked`, `train/masked_idx`
  and the ids of `inputs.npz` this reproduces `train/mask_loss` and `train/mask_acc`.
  """
  chex.assert_rank(hidden, 3)
  chex.assert_shape(input_ids, hidden.shape[:2])
  return masked_lm_loss(lm_head(gather_masked(hidden, masked_idx)), gather_masked(input_ids, masked_idx))


# ----------------------------------------------------------------------------------------------
# Contrastive.


def contrastive_loss(lang: jax.Array, viz: jax.Array, temperature: float,
                     weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Segment-frame InfoNCE over the global batch: [N, C] L2-normalised projections of both sides.

  Row i of each side is positive with row i of the other; every other row is a negative. Returns
  weight * mean(lang_to_viz, viz_to_lang) and both mean CEs. The two directions use two matmuls
  (not one transposed) so each keeps its rows sharded like its queries.
  """
  chex.assert_rank([lang, viz], 2)
  chex.assert_equal_shape([lang, viz])
  labels = jnp.arange(lang.shape[0])
  losses = {}
  for name, x, y in (('lang_to_viz', lang, viz), ('viz_to_lang', viz, lang)):
    logits = jnp.einsum('nc,mc->nm', x.astype(jnp.float32), y.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST) / temperature
    losses[name] = jnp.mean(_cross_entropy(logits, labels))
  return weight * (losses['lang_to_viz'] + losses['viz_to_lang']) / 2, losses


def center_projections(x: jax.Array) -> jax.Array:
  """[N, C] projections minus their mean row, L2-normalised again (objectives.contrast_center).

  Not in the original; configs/demo.py says why it is there. Trained from scratch, both sides'
  projections soon share one dominant direction, and then the InfoNCE logits depend on the small
  per-row parts only at second order, so the loss sits at ln(N) for hundreds of steps. Without the
  shared part they act at first order. Under jit the mean is over the global batch.
  """
  chex.assert_rank(x, 2)
  return l2_normalize(x - jnp.mean(x.astype(jnp.float32), axis=0, keepdims=True))


def retrieval_top_k_accuracy(queries: jax.Array, keys: jax.Array, k: int) -> jax.Array:
  """Fraction of rows i of queries [N, C] whose own key (row i of keys [N, C]) is among their k most
  similar keys by dot product (k = 1: retrieval accuracy; chance k / N)."""
  chex.assert_equal_shape([queries, keys])
  scores = jnp.einsum('nc,mc->nm', queries, keys)
  better = jnp.sum(scores > jnp.diagonal(scores)[:, None], axis=1)
  return jnp.mean((better < k).astype(jnp.float32))


# ----------------------------------------------------------------------------------------------
# Temporal ordering.


def temporal_labels(video_src_ids: jax.Array) -> jax.Array:
  """[G, n] video ids -> [G*n*n] int32: 0 other video, 1 same segment, 2 i before j, 3 i after j."""
  chex.assert_rank(video_src_ids, 2)
  n = video_src_ids.shape[1]
  i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
  order = jnp.where(i == j, 1, jnp.where(i < j, 2, 3))
  same_video = video_src_ids[:, :, None] == video_src_ids[:, None, :]
  return jnp.where(same_video, order, 0).reshape(-1).astype(jnp.int32)


def temporal_pair_weights(image_index: jax.Array, mode: str, easy_weight: float,
                          offset: int) -> jax.Array:
  """[G, n] image-index rows -> [G*n*n] pair weights: easy_weight if both frames are easy, else 1.

  'original': easy iff index < 64, the released code's test; with shuffled frames at offset (16) +
  permutation every frame is easy, so every pair gets easy_weight. 'intended': easy iff the frame is
  unshuffled (index < offset), so pairs with a shuffled frame get weight 1.
  """
  chex.assert_rank(image_index, 2)
  if mode not in CHOICES['objectives.temporal_pair_weighting']:
    raise ValueError(f"objectives.temporal_pair_weighting = {mode!r}: must be one of "
                     f"{CHOICES['objectives.temporal_pair_weighting']}")
  is_easy = image_index < (UNKNOWN_POSITION_ROW if mode == 'original' else offset)
  both_easy = is_easy[:, :, None] & is_easy[:, None, :]
  weight = jnp.logical_not(both_easy).astype(jnp.float32) * (1.0 - easy_weight) + easy_weight
  return weight.reshape(-1)


def temporal_loss(logits: jax.Array, labels: jax.Array,
                  weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[M, 4] logits, [M] labels and weights -> (mean(CE * w), sum(right * w) / (sum(w) + 1e-5))."""
  chex.assert_rank(logits, 2)
  chex.assert_shape([labels, weights], logits.shape[:1])
  loss = jnp.mean(_cross_entropy(logits, labels) * weights)
  right = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return loss, jnp.sum(right * weights) / (jnp.sum(weights) + 1e-5)


def temporal_objective(logits_lang_viz: jax.Array, logits_viz_viz: jax.Array, video_src_ids: jax.Array,
                       image_index: jax.Array,
                       cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Both temporal heads' losses as the original's `temporal_loss`: [G*n*n, 4] logits x2, [G, n] ids.

  The frame-frame loss only counts when frames can be shuffled (image_shuffle_prob > 0); the total is
  scaled by temporal_weight. Returns (total, {lang_viz_loss, lang_viz_acc, viz_viz_loss, viz_viz_acc, loss}).
  """
  chex.assert_equal_shape([video_src_ids, image_index])
  labels = temporal_labels(video_src_ids)
  weights = temporal_pair_weights(image_index, cfg.temporal_pair_weighting, cfg.temporal_easy_weight,
                                  cfg.shuffled_index_offset)
  info = {}
  for name, logits in (('lang_viz', logits_lang_viz), ('viz_viz', logits_viz_viz)):
    info[f'{name}_loss'], info[f'{name}_acc'] = temporal_loss(logits, labels, weights)
  info['loss'] = info['lang_viz_loss']
  if cfg.image_shuffle_prob > 0:
    info['loss'] = info['loss'] + info['viz_viz_loss']
  return info['loss'] * cfg.temporal_weight, info
