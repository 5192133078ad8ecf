"""MERLOT's pretraining loss: one forward of every pass, then the three objectives (as model_fn).

Order as the original: the language-only pass (its attention guides the masking and its segment
states are the contrastive source), the span masking, the joint encoder on the masked transcript,
then masked LM + contrastive + temporal reordering. Total = MLM + contrast_weight * contrastive
(inside `contrastive_loss`) + temporal_weight * temporal.
"""

from __future__ import annotations

import einops
import jax
import ml_collections

from merlot_jax.models.merlot import MerlotModel
from merlot_jax.pretraining import objectives

RETRIEVAL_METRICS = {'acc': 1, 'top10_acc': 10}  # transcript->frame: own frame first / among the 10 nearest


def pretraining_loss(model: MerlotModel, batch: dict[str, jax.Array], rng: jax.Array,
                     config: ml_collections.ConfigDict, *, train: bool = True
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """batch: images [b, N, H, W, 3], input_ids [b, N, T], video_src_ids [b, N], image_index [b, N].

  Returns the total loss and a flat dict of scalar metrics. `train=False` turns dropout off (the
  masking stays random: it defines the task).
  """
  m, o = config.model, config.objectives
  k_mask, k_vision, k_lang, k_joint = jax.random.split(rng, 4)
  if not train:
    k_vision = k_lang = k_joint = None
  ids = batch['input_ids']
  n = m.segments_per_group
  group_len = n * m.segment_length

  lang = model.language_only(ids, dropout_rng=k_lang, return_attention=o.mask_use_attention)
  attention = None
  if o.mask_use_attention:
    received = jax.lax.stop_gradient(objectives.attention_received(lang.attention))
    attention = objectives.video_to_groups(received, group_len)
  group_ids = objectives.video_to_groups(einops.rearrange(ids, 'b n t -> b (n t)'), group_len)
  masked_ids, masked_idx = objectives.span_mask(k_mask, group_ids, attention, o, m.vocab_size)

  vision = model.encode_frames(batch['images'], dropout_rng=k_vision)
  masked_input = einops.rearrange(masked_ids, '(b k) (n t) -> b (k n) t', n=n, t=m.segment_length,
                                  b=ids.shape[0])
  joint = model.joint(vision, masked_input, batch['image_index'], dropout_rng=k_joint)

  mlm_loss, mlm_acc = objectives.masked_lm_objective(joint.text, masked_idx, group_ids, model.lm_logits)
  text_proj = model.contrastive_text(einops.rearrange(lang.segment_states, 'b n d -> (b n) d'))
  frame_proj = model.contrastive_frame(vision.cls[:, 1])
  if o.contrast_center:
    text_proj, frame_proj = objectives.center_projections(text_proj), objectives.center_projections(frame_proj)
  contrast_loss, contrast = objectives.contrastive_loss(text_proj, frame_proj, o.contrast_temperature,
                                                        o.contrast_weight)
  temporal = model.temporal_logits(joint)
  groups = joint.visual.shape[0]
  temporal_loss, temporal_info = objectives.temporal_objective(
      temporal['text_frame'], temporal['frame_frame'], batch['video_src_ids'].reshape(groups, n),
      batch['image_index'].reshape(groups, n), o)

  total = mlm_loss + contrast_loss + temporal_loss
  metrics = {'loss': total, 'mlm/loss': mlm_loss, 'mlm/acc': mlm_acc, 'contrastive/loss': contrast_loss,
             **{f'contrastive/{k}': v for k, v in contrast.items()},
             **{f'contrastive/lang_to_viz_{name}': objectives.retrieval_top_k_accuracy(text_proj, frame_proj, k)
                for name, k in RETRIEVAL_METRICS.items()},
             'temporal/loss': temporal_loss, **{f'temporal/{k}': v for k, v in temporal_info.items() if k != 'loss'}}
  return total, metrics
