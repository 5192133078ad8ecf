"""Numerical parity with the original TF MERLOT on a reference folder (config, variables, inputs, outputs).

A reference folder has the layout of tests/golden/tf_reference_A: `config.json` (the original's
`model:` keys), `variables.npz` (TF variable name -> array), `inputs.npz` and `outputs.npz` (see its
README for what each output is). `model_outputs` computes every output key with merlot_jax in float32.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from merlot_jax.config import default_config, validate
from merlot_jax.convert.tf_checkpoint import convert_variables
from merlot_jax.models.merlot import MerlotModel, segment_first_tokens
from merlot_jax.pretraining import objectives

# Original config key -> merlot_jax model field.
MODEL_KEYS = {
    'num_chunks': 'num_segments', 'chunk_text_len': 'segment_length', 'num_chunks_in_group': 'segments_per_group',
    'patch_size': 'patch_size', 'spatial_pool_size': 'pool_size', 'hidden_size': 'hidden_size',
    'num_attention_heads': 'num_heads', 'intermediate_size': 'mlp_dim',
    'num_vision_transformer_hidden_layers': 'num_vision_layers', 'num_hidden_layers': 'num_joint_layers',
    'num_lang_transformer_hidden_layers': 'num_langonly_layers', 'vocab_size': 'vocab_size',
    'max_position_embeddings': 'max_positions', 'contrastive_size': 'contrastive_size',
    'initializer_range': 'init_std', 'hidden_dropout_prob': 'dropout_rate',
}
IMPLICIT_KEYS = {'num_cls_emb': 'num_cls_tokens', 'max_vision_pos_embeddings': 'max_image_positions'}
HARDCODED_KEYS = {'resnet_width': 'resnet_width', 'position_embedder2d_max_hw': 'max_2d_positions'}
# Settings of the original that merlot_jax does not implement, with the value it assumes.
REQUIRED = {'share_params': True, 'do_projection': True, 'do_bias': True, 'num_imgs': 1, 'num_texts': 1,
            'disable_pairwise_lang_attn': False}
# Recorded random draws of the original's training graph: inputs to us, checked for consistency.
DRAW_KEYS = ('train/masked_ids', 'train/masked_idx')


def config_from_reference(ref: Mapping) -> ml_collections.ConfigDict:
  """A float32 merlot_jax config equivalent to an original `model:` config (plus implicit defaults)."""
  implicit = ref.get('_implicit_default_read_by_original_code', ref.get('_implicit_defaults_read_by_original_code', {}))
  settings = {**{k: v for k, v in implicit.items() if k != 'hardcoded'}, **ref}
  for key, assumed in REQUIRED.items():
    if key in settings and not isinstance(settings[key], str) and settings[key] != assumed:
      raise ValueError(f'reference config sets {key}={settings[key]!r}; merlot_jax implements only {assumed!r}')
  c = default_config()
  m = c.model
  for theirs, ours in MODEL_KEYS.items():
    if theirs not in ref:
      raise ValueError(f'reference config has no {theirs!r} (needed for model.{ours})')
    m[ours] = ref[theirs]
  for theirs, ours in IMPLICIT_KEYS.items():
    if theirs in implicit:
      m[ours] = implicit[theirs]
  for theirs, ours in HARDCODED_KEYS.items():
    if theirs in implicit.get('hardcoded', {}):
      m[ours] = implicit['hardcoded'][theirs]
  m.image_size = tuple(ref['image_size'])
  m.resnet_blocks = tuple(ref['resnet_layers'])
  m.dtype, m.scan_layers = 'float32', True
  o = c.objectives
  o.mask_rate = ref.get('masking_rate', o.mask_rate)
  o.mask_topk_prob = ref.get('masking_choose_topk_prob', o.mask_topk_prob)
  o.mask_span_probs = tuple(ref.get('masking_spanbert_len_probs', o.mask_span_probs))
  o.contrast_temperature = ref.get('contrast_temp', o.contrast_temperature)
  o.contrast_weight = ref.get('contrast_coef', o.contrast_weight)
  o.image_shuffle_prob = ref.get('image_shuffle_prob', o.image_shuffle_prob)
  o.temporal_weight = implicit.get('temporal_coef', o.temporal_weight)
  c.train.global_batch_size = ref.get('batch_size', c.train.global_batch_size)
  return validate(c)


@dataclasses.dataclass(frozen=True)
class Reference:
  config: ml_collections.ConfigDict
  variables: dict[str, np.ndarray]
  inputs: dict[str, np.ndarray]
  outputs: dict[str, np.ndarray]


def load_reference(folder: str | pathlib.Path) -> Reference:
  folder = pathlib.Path(folder)
  for name in ('config.json', 'variables.npz', 'inputs.npz', 'outputs.npz'):
    if not (folder / name).is_file():
      raise FileNotFoundError(f'{folder / name} is missing: a reference folder needs config.json, '
                              'variables.npz, inputs.npz and outputs.npz')
  load = lambda name: dict(np.load(folder / name))
  config = config_from_reference(json.loads((folder / 'config.json').read_text()))
  return Reference(config, load('variables.npz'), load('inputs.npz'), load('outputs.npz'))


def build_converted_model(ref: Reference) -> MerlotModel:
  # Shapes only: every parameter is overwritten, and an eager random init costs one truncated-normal
  # compile per parameter shape (about half of this script's run time on CPU).
  model = nnx.eval_shape(lambda: MerlotModel(ref.config.model, rngs=nnx.Rngs(params=0)))
  convert_variables(ref.variables, model)
  return model


def model_outputs(model: MerlotModel, objectives_config: ml_collections.ConfigDict,
                  inputs: Mapping[str, np.ndarray], draws: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every output key of the reference format, in float32: hidden states, heads and the losses.

  `draws` holds the reference's recorded masking draw (`train/masked_ids`, `train/masked_idx`), which
  the masked-LM outputs use in place of a fresh random draw.
  """
  m, o = model.config, objectives_config
  b, n, t = inputs['input_ids'].shape
  images = jnp.asarray(inputs['images']).reshape(b, n, *inputs['images'].shape[1:])
  ids = jnp.asarray(inputs['input_ids'])
  image_index = jnp.asarray(inputs['shuffled_idx_img']).reshape(b, n)
  vision = model.encode_frames(images)
  joint = model.joint(vision, ids, image_index, return_attention=True)
  lang = model.language_only(ids, return_attention=True)
  groups = joint.visual.shape[0]
  temporal = model.temporal_logits(joint)
  text_first = segment_first_tokens(joint.text, m.segments_per_group)
  frame_first = segment_first_tokens(joint.visual, m.segments_per_group)
  lang_trg = lang.segment_states.reshape(b * n, -1)
  img_trg = vision.cls[:, 1]
  lang_proj, viz_proj = model.contrastive_text(lang_trg), model.contrastive_frame(img_trg)
  video_src_ids = jnp.asarray(inputs['video_src_ids']).reshape(groups, -1)
  temporal_loss, temporal_info = objectives.temporal_objective(
      temporal['text_frame'], temporal['frame_frame'], video_src_ids, image_index.reshape(groups, -1), o)
  contrastive_all, contrastive = objectives.contrastive_loss(lang_proj, viz_proj, o.contrast_temperature,
                                                             o.contrast_weight)
  out = {
      'debug_resnet_stem_img0': vision.resnet['stem'][0],
      **{f'debug_resnet_block_group{i}_img0': vision.resnet[f'stage{i}'][0] for i in (1, 2, 3)},
      'vit_patch_tokens': vision.patches, 'vit_input': vision.tokens, 'vit_hidden_state': vision.hidden,
      'vit_cls': vision.cls, 'vit_seq_pooled': vision.pooled, 'img_trg_h': img_trg,
      'vision_pos_emb': model.visual_position_embedding(image_index, groups),
      'encoder_input_viz': joint.visual_input, 'encoder_input_lang': joint.text_input,
      'encoder_is_valid': joint.valid, 'encoder_hidden_viz': joint.visual, 'encoder_hidden_lang': joint.text,
      'encoder_attn_probs_headmean': joint.attention, 'lm_logits': model.lm_logits(joint.text),
      'temporal_h_lang': text_first, 'temporal_h_viz': frame_first,
      'temporal_logits_lang_viz': temporal['text_frame'], 'temporal_logits_viz_viz': temporal['frame_frame'],
      'temporal_labels': objectives.temporal_labels(video_src_ids),
      'temporal_loss': temporal_loss, **{f'temporal_info_{k}': v for k, v in temporal_info.items()},
      'langonly_hidden': lang.hidden, 'langonly_attn_probs_headmean': lang.attention, 'lang_trg_h': lang_trg,
      'contrastive_lang_proj': lang_proj, 'contrastive_viz_proj': viz_proj,
      'contrastive_loss_all': contrastive_all, **{f'contrastive_loss_{k}': v for k, v in contrastive.items()},
  }
  if all(k in draws for k in DRAW_KEYS):
    masked = model.joint(vision, jnp.asarray(draws['train/masked_ids']), image_index)
    out['train/lang_hidden_masked'], out['train/viz_hidden_masked'] = masked.text, masked.visual
    out['train/mask_loss'], out['train/mask_acc'] = objectives.masked_lm_objective(
        masked.text, jnp.asarray(draws['train/masked_idx']), ids.reshape(groups, -1), model.lm_logits)
  return {k: np.asarray(jax.device_get(v)) for k, v in out.items()}


def check_draws(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], segments_per_group: int
                ) -> list[str]:
  """The recorded masking draw must leave every position outside `masked_idx` unchanged."""
  if not all(k in outputs for k in DRAW_KEYS):
    return []
  ids, masked = inputs['input_ids'], outputs['train/masked_ids']
  groups = masked.size // (segments_per_group * ids.shape[-1])
  keep = np.ones((groups, masked.size // groups), bool)
  np.put_along_axis(keep, outputs['train/masked_idx'], False, axis=1)
  changed = (ids.reshape(groups, -1) != masked.reshape(groups, -1)) & keep
  return [f'train/masked_ids differs from input_ids outside train/masked_idx at {int(changed.sum())} positions'
          ] if changed.any() else []


@dataclasses.dataclass(frozen=True)
class KeyResult:
  key: str
  max_abs_error: float
  max_abs_reference: float
  exact: bool  # integer/boolean keys compare exactly

  @property
  def relative(self) -> float:
    return self.max_abs_error / max(self.max_abs_reference, 1e-30)


def compare(ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> tuple[list[KeyResult], list[str]]:
  """Per-key errors for every reference key we produce, and the keys we do not produce."""
  results, missing = [], []
  for key, ref in sorted(reference.items()):
    if key in DRAW_KEYS:
      continue
    if key not in ours:
      missing.append(key)
      continue
    got = ours[key]
    if got.shape != ref.shape:
      raise ValueError(f'{key}: shape {got.shape}, reference {ref.shape}')
    exact = ref.dtype.kind in 'biu'
    err = float(np.max(got != ref)) if exact else float(np.max(np.abs(got.astype(np.float64) - ref)))
    results.append(KeyResult(key, err, 1.0 if exact else float(np.max(np.abs(ref))), exact))
  return results, missing
