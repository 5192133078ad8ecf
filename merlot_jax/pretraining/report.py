"""After a pretraining run: a PNG of the training curves and a summary of held-out accuracy vs chance.

Chance levels come from the held-out batches themselves: retrieval picks 1 (top-10: 10) of the global
batch's segments; masked LM is compared with always predicting the most frequent real token; temporal
ordering with always predicting the most frequent pair label (weighted as the loss weights pairs).
The contrastive loss is compared with ln(segments per batch), the loss of a uniform guess.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from merlot_jax.pretraining import objectives
from merlot_jax.pretraining.loss import RETRIEVAL_METRICS
from merlot_jax.special_tokens import NUM_SPECIAL
from merlot_jax.train.summary import read_scalars as read_scalars  # the curves' source: the run's <workdir>/train

PLOTTED = (('loss', 'total loss'), ('mlm/loss', 'masked LM loss'), ('contrastive/loss', 'contrastive loss'),
           ('temporal/loss', 'temporal loss'), ('mlm/acc', 'masked LM accuracy'),
           ('contrastive/lang_to_viz_acc', 'transcript->frame retrieval accuracy'),
           ('temporal/lang_viz_acc', 'transcript-frame order accuracy'),
           ('temporal/viz_viz_acc', 'frame-frame order accuracy'))
SUMMARIZED = PLOTTED + (('contrastive/lang_to_viz_top10_acc', 'transcript->frame top-10 retrieval accuracy'),
                        ('contrastive/lang_to_viz', 'transcript->frame contrastive loss'))


def plot_curves(scalars: Mapping[str, list[tuple[int, float]]], path: str | os.PathLike) -> None:
  """A PNG of the PLOTTED curves (held-out points over the training ones) at `path`."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  shown = [(tag, title) for tag, title in PLOTTED if tag in scalars]
  cols = 4
  rows = max(1, -(-len(shown) // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
  for ax, (tag, title) in zip(axes.flat, shown, strict=False):
    steps, values = zip(*scalars[tag], strict=True)
    ax.plot(steps, values, label='train')
    if f'eval/{tag}' in scalars:
      ax.plot(*zip(*scalars[f'eval/{tag}'], strict=True), 'o-', label='held-out')
      ax.legend()
    ax.set_title(title)
    ax.set_xlabel('step')
  for ax in list(axes.flat)[len(shown):]:
    ax.axis('off')
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=100)
  plt.close(fig)
  epath.Path(path).write_bytes(png.getvalue())


def chance_levels(batches: Iterable[Mapping[str, np.ndarray]], config: ml_collections.ConfigDict) -> dict[str, float]:
  """Accuracy of the best constant guess on these batches, for each accuracy the loss reports, and the
  transcript->frame contrastive loss of a uniform guess."""
  m, o = config.model, config.objectives
  tokens, labels, weights = collections.Counter(), [], []
  for b in batches:
    ids = b['input_ids'][..., 1:].reshape(-1)
    tokens.update(ids[ids >= NUM_SPECIAL].tolist())
    groups = b['video_src_ids'].reshape(-1, m.segments_per_group)
    labels.append(np.asarray(objectives.temporal_labels(groups)))
    weights.append(np.asarray(objectives.temporal_pair_weights(
        b['image_index'].reshape(-1, m.segments_per_group), o.temporal_pair_weighting, o.temporal_easy_weight,
        o.shuffled_index_offset)))
  labels, weights = np.concatenate(labels), np.concatenate(weights)
  per_class = [weights[labels == c].sum() for c in range(4)]
  segments = config.train.global_batch_size * m.num_segments
  return {**{f'contrastive/lang_to_viz_{name}': k / segments for name, k in RETRIEVAL_METRICS.items()},
          'contrastive/lang_to_viz': math.log(segments),
          'mlm/acc': max(tokens.values()) / sum(tokens.values()),
          'temporal/lang_viz_acc': max(per_class) / weights.sum(),
          'temporal/viz_viz_acc': max(per_class) / weights.sum()}


def write_summary(workdir: str | os.PathLike, scalars: Mapping[str, list[tuple[int, float]]],
                  heldout: Mapping[str, float], chance: Mapping[str, float],
                  stories: Mapping[str, Any] | None = None) -> str:
  """summary.txt (human) and summary.json (machine) in workdir; returns the text.

  stories: optional zero-shot story ordering, {'stories': count, 'model': metrics, 'random': metrics}.
  """
  loss = scalars['loss']
  lines = [f'training loss: {loss[0][1]:.4f} at step {loss[0][0]} -> {loss[-1][1]:.4f} at step {loss[-1][0]}',
           'held-out accuracy and contrastive loss (chance = best constant guess on the same batches):']
  for tag, title in SUMMARIZED:
    if tag in chance:
      lines.append(f'  {title:44s} {heldout[tag]:.3f}   chance {chance[tag]:.3f}')
  if stories is not None:
    lines.append(f'zero-shot ordering of {stories["stories"]} held-out stories (random order in the last column):')
    lines += [f'  {name:44s} {value:.3f}   random {stories["random"][name]:.3f}'
              for name, value in stories['model'].items()]
  text = '\n'.join(lines) + '\n'
  workdir = epath.Path(workdir)
  (workdir / 'summary.txt').write_text(text)
  floats = lambda d: {k: float(v) for k, v in d.items()}
  (workdir / 'summary.json').write_text(json.dumps({
      'train_loss_first': loss[0], 'train_loss_last': loss[-1], 'heldout': floats(heldout), 'chance': floats(chance),
      **({'stories': stories} if stories is not None else {})}, indent=1))
  return text
