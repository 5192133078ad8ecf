"""Zero-shot visual story ordering (the paper's SIND/VIST experiment) as the original's
downstream/sort_story does it (get_zero_shot_logits.py, then score_permutations.py).

A story is 5 captions in their true order and its 5 images in an unknown order; the 5 segments form one
group of the joint encoder. Every image gets an 'unknown position' row of the image-index table:
`config.UNKNOWN_POSITION_ROW` (64, past the rows pretraining uses: 0..n-1 in order, 16 + position shuffled)
plus a random permutation of 0..4, and the transcript-frame temporal head's softmax is averaged over
`NUM_INDEX_DRAWS` such draws (the original's duplication_factor). Caption i and image slot s then give
probabilities of 'same time' (class 1), 'i before s' (2) and 'i after s' (3). An ordering (a position
for every slot) scores the sum over all 25 pairs of the log-probability of the class it implies, and
the best of the 120 orderings is the prediction. Per story, as score_permutations.py: Spearman's rho,
pairwise accuracy and mean absolute distance between predicted and true positions, averaged over
stories; `random_baseline` gives their expectation for a uniformly random order.

5 segments in one group (the original used a separate merlot_5segments model config): `story_config`
changes only num_segments and segments_per_group. No parameter shape depends on them (the position
tables are sized by max_positions and max_image_positions), so a pretraining checkpoint loads into the
story model as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import pathlib
from collections.abc import Callable, Iterable

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from merlot_jax.config import UNKNOWN_POSITION_ROW, ConfigError, validate
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.pretrained import load_pretrained
from merlot_jax.tasks.story_data import STORY_LENGTH

NUM_INDEX_DRAWS = 2
SAME, BEFORE, AFTER = 1, 2, 3  # temporal classes (0: another video, unused here)


def story_config(config: ml_collections.ConfigDict, length: int = STORY_LENGTH,
                 index_offset: int = UNKNOWN_POSITION_ROW) -> ml_collections.ConfigDict:
  """The pretraining config with `length` segments in one group; every parameter shape is unchanged."""
  c = config.copy_and_resolve_references()
  c.model.num_segments = c.model.segments_per_group = length
  if index_offset + length > c.model.max_image_positions:
    raise ConfigError(f'config.model.max_image_positions = {c.model.max_image_positions}: story ordering uses '
                      f'image-index rows {index_offset}..{index_offset + length - 1}; lower the offset')
  return validate(c)


def load_story_model(checkpoint: str | pathlib.Path) -> tuple[MerlotModel, ml_collections.ConfigDict]:
  """(model, config): story_config of a checkpoint's config (params checkpoint or training workdir, see
  merlot_jax.pretrained), and the model with its parameters."""
  return load_pretrained(checkpoint, config_fn=story_config)


def unknown_image_index(rng: np.random.Generator, batch: int, num_draws: int = NUM_INDEX_DRAWS,
                        length: int = STORY_LENGTH, offset: int = UNKNOWN_POSITION_ROW) -> np.ndarray:
  """int32 [batch, num_draws, length]: offset + a random permutation (argsort of uniforms, as the original)."""
  return (offset + np.argsort(rng.random((batch, num_draws, length)), axis=-1)).astype(np.int32)


def pair_log_probs(model: MerlotModel, images: jax.Array, input_ids: jax.Array,
                   image_index: jax.Array) -> jax.Array:
  """float32 [b, n, n, 4]: [., i, s, c] = log of the draw-averaged probability of temporal class c
  for caption i and the image in slot s.

  images: [b, n, H, W, 3]; input_ids: [b, n, T] captions in true order; image_index: [b, draws, n].
  """
  m = model.config
  n, b = m.segments_per_group, input_ids.shape[0]
  if m.num_segments != n:
    raise ValueError(f'story ordering needs one group per story (num_segments = segments_per_group), got '
                     f'{m.num_segments} and {n}: build the model from story_config(config)')
  chex.assert_shape(image_index, (b, None, n))
  vision = model.encode_frames(images)
  probs = []
  for d in range(image_index.shape[1]):
    joint = model.joint(vision, input_ids, image_index[:, d])
    logits = model.temporal_logits(joint)['text_frame'].astype(jnp.float32)
    probs.append(jax.nn.softmax(logits, axis=-1).reshape(b, n, n, -1))
  return jnp.log(jnp.mean(jnp.stack(probs), axis=0))


# One compiled function for every caller, so that models of the same structure and batch shape share it.
jitted_pair_log_probs = nnx.jit(pair_log_probs)


@functools.cache
def orderings(n: int = STORY_LENGTH) -> np.ndarray:
  """int [n!, n]: every ordering in itertools.permutations order; row[s] = position of slot s."""
  perms = np.array(list(itertools.permutations(range(n))))
  perms.setflags(write=False)  # shared by every caller of the cache
  return perms


def score_orderings(log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(best ordering [n], scores [n!]) from [n, n, 4] pair log-probabilities (caption i, slot s).

  Score of an ordering: sum over (i, s) of log p(same) where position(s) = i, log p(before) where
  i < position(s), log p(after) where i > position(s). Ties go to the first ordering.
  """
  lp = np.asarray(log_probs, np.float64)
  n = lp.shape[0]
  chex.assert_shape(lp, (n, n, 4))
  perms = orderings(n)
  caption, position = np.arange(n)[None, :, None], perms[:, None, :]  # [1, n, 1], [n!, 1, n]
  cls = np.where(caption == position, SAME, np.where(caption < position, BEFORE, AFTER))
  scores = lp[np.arange(n)[:, None], np.arange(n)[None, :], cls].sum(axis=(1, 2))
  return perms[np.argmax(scores)], scores


# --- metrics -------------------------------------------------------------------------------------


def _positions(pred, true) -> tuple[np.ndarray, np.ndarray]:
  pred, true = np.asarray(pred), np.asarray(true)
  n = len(true)
  for name, x in (('pred', pred), ('true', true)):
    if sorted(x.tolist()) != list(range(n)):
      raise ValueError(f'{name} = {x.tolist()}: positions must be a permutation of 0..{n - 1}')
  return pred, true


def spearman(pred, true) -> float:
  """Spearman's rho: the correlation of the two position vectors (positions are their own ranks)."""
  pred, true = _positions(pred, true)
  return float(np.corrcoef(pred, true)[0, 1])


def pairwise_accuracy(pred, true) -> float:
  """The fraction of the n(n-1)/2 pairs that `pred` puts in their true relative order."""
  pred, true = _positions(pred, true)
  a, b = np.triu_indices(len(true), 1)
  return float(np.mean(np.sign(pred[a] - pred[b]) == np.sign(true[a] - true[b])))


def mean_abs_distance(pred, true) -> float:
  """Mean |predicted - true position| over the items."""
  pred, true = _positions(pred, true)
  return float(np.mean(np.abs(pred - true)))


METRICS: dict[str, Callable[..., float]] = {
    'spearman': spearman, 'pairwise_accuracy': pairwise_accuracy, 'mean_abs_distance': mean_abs_distance}


def random_baseline(n: int = STORY_LENGTH) -> dict[str, float]:
  """Each metric's expectation for a uniformly random order: the mean over all n! orderings."""
  identity = np.arange(n)
  return {k: float(np.mean([f(p, identity) for p in orderings(n)])) for k, f in METRICS.items()}


# --- evaluation ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoryPrediction:
  """Positions per image slot: the truth and the best-scoring ordering."""
  story_id: str
  true_position: np.ndarray  # int [n]
  predicted_position: np.ndarray  # int [n]
  scores: np.ndarray  # float [n!], in `orderings` order


def evaluate(model: MerlotModel, batches: Iterable[dict[str, np.ndarray]], *, seed: int = 0,
             num_draws: int = NUM_INDEX_DRAWS, index_offset: int = UNKNOWN_POSITION_ROW) -> list[StoryPrediction]:
  """Orders every story of `story_data.story_batches` output."""
  rng = np.random.default_rng(seed)
  out = []
  for batch in batches:
    b, n = batch['true_position'].shape
    index = unknown_image_index(rng, b, num_draws, n, index_offset)
    inputs = (jnp.asarray(batch['images']), jnp.asarray(batch['input_ids']), jnp.asarray(index))
    log_probs = np.asarray(jitted_pair_log_probs(model, *inputs))
    for k in range(int(batch['num_valid'])):
      best, scores = score_orderings(log_probs[k])
      out.append(StoryPrediction(str(batch['story_id'][k]), batch['true_position'][k], best, scores))
  return out


def summarize(predictions: Iterable[StoryPrediction]) -> dict[str, float]:
  """Each metric averaged over the stories."""
  predictions = list(predictions)
  if not predictions:
    raise ValueError('no stories to summarize')
  return {k: float(np.mean([f(p.predicted_position, p.true_position) for p in predictions]))
          for k, f in METRICS.items()}
