"""Original TF MERLOT variables (rowanz/merlot) -> merlot_jax parameters.

`tf_variable_map(model_config)` lists, for every parameter of `MerlotModel`, the TF variable(s) it
comes from and how the layout changes (per-layer variables are stacked on a leading axis, 1x1 convs
become dense kernels, the leading singleton of the 2-D tables is dropped). The map is built from the
config alone, so a converted checkpoint is checked name by name and shape by shape.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping

import ml_collections
import numpy as np
from flax import nnx, traverse_util

from merlot_jax.extras import import_extra

Path = tuple[str | int, ...]
# Optimiser slots and bookkeeping that a released checkpoint may hold besides the model.
IGNORED_SUFFIXES = ('/adam_m', '/adam_v', 'global_step')


class ConversionError(ValueError):
  """The TF variables do not match the model config (names listed in the message)."""


@dataclasses.dataclass(frozen=True)
class Source:
  names: tuple[str, ...]  # one TF variable, or one per layer
  transform: Callable[[np.ndarray], np.ndarray] = lambda x: x
  stacked: bool = False  # per-layer variables, stacked on a new leading axis


def _dense(path: Path, tf: str) -> dict[Path, Source]:
  return {path + ('kernel',): Source((f'{tf}/kernel',)), path + ('bias',): Source((f'{tf}/bias',))}


def _norm(path: Path, tf: str) -> dict[Path, Source]:
  return {path + ('scale',): Source((f'{tf}/gamma',)), path + ('bias',): Source((f'{tf}/beta',))}


def _stack(path: Path, tf_scope: str, num_layers: int) -> dict[Path, Source]:
  """A TransformerStack: per-layer TF scopes layerNN/... stacked into [layers, ...] arrays."""
  block = {}
  block.update(_norm(('attn_ln',), 'LayerNorm_attn_ln0'))
  for ours, theirs in [('query', 'query_layer'), ('key', 'key_layer'), ('value', 'value_layer'),
                       ('out', 'context_projection_layer')]:
    block.update(_dense(('attn', ours), theirs))
  block.update(_norm(('mlp_ln',), 'LayerNorm_mlp_ln0'))
  block.update(_dense(('mlp', 'intermediate'), 'intermediate'))
  block.update(_dense(('mlp', 'output'), 'output'))
  out = {}
  for sub, src in block.items():
    (name,) = src.names
    out[path + ('layers',) + sub] = Source(tuple(f'{tf_scope}/layer{i:02d}/{name}' for i in range(num_layers)),
                                           stacked=True)
  out.update(_norm(path + ('final_ln',), f'{tf_scope}/LayerNorm_ln_final'))
  return out


def _numbered(name: str, k: int) -> str:
  """TF's default layer names: conv2d, conv2d_1, conv2d_2, ..."""
  return name if k == 0 else f'{name}_{k}'


def _resnet(m: ml_collections.ConfigDict) -> dict[Path, Source]:
  scope = 'vision_backbone/vision_transformer/resnet50lite'
  out = {}
  for i in range(3):
    out[('vision', 'resnet', 'stem', i, 'conv', 'kernel')] = Source((f'{scope}/stem/{_numbered("conv2d", i)}/kernel',))
    out.update(_norm(('vision', 'resnet', 'stem', i, 'norm'), f'{scope}/stem/GroupNorm_stem{i}'))
  for s, blocks in enumerate(m.resnet_blocks):
    group = f'{scope}/block_group{s + 1}'
    for b in range(blocks):
      convs = [('proj', 0)] if b == 0 else []
      convs += [(f'conv{j}', 3 * b + j) for j in (1, 2, 3)]
      for ours, k in convs:
        path = ('vision', 'resnet', 'stages', s, b, ours)
        out[path + ('conv', 'kernel')] = Source((f'{group}/{_numbered("conv2d", k)}/kernel',))
        out.update(_norm(path + ('norm',), f'{group}/{_numbered("GroupNorm", k)}'))
  return out


def tf_variable_map(m: ml_collections.ConfigDict) -> dict[Path, Source]:
  """Every MerlotModel parameter path -> the TF variable(s) of the original it is made from."""
  vt = 'vision_backbone/vision_transformer'
  first = lambda x: x[0]  # drop the leading singleton of [1, ...] tables
  out = _resnet(m)
  out[('vision', 'proj', 'kernel')] = Source((f'{vt}/conv_postresnet_proj/kernel',), lambda x: x[0, 0])
  out[('vision', 'proj', 'bias')] = Source((f'{vt}/conv_postresnet_proj/bias',))
  out[('vision', 'pos', 'grid')] = Source((f'{vt}/pos_embs/pos_embs',), first)
  out[('vision', 'pos', 'cls')] = Source((f'{vt}/pos_embs/cls_emb',), first)
  out.update(_norm(('vision', 'pre_ln'), f'{vt}/LayerNorm_ctx_patches_pre_ln'))
  out.update(_stack(('vision', 'transformer'), vt, m.num_vision_layers))
  out[('image_index_embedding',)] = Source(('vision_backbone/img_idx_pe',))
  out[('visual_positions', 'grid')] = Source(('vision_backbone/final_pe/pos_embs',), first)
  out[('visual_positions', 'cls')] = Source(('vision_backbone/final_pe/cls_emb',), first)
  out.update(_norm(('visual_norm',), 'vision_backbone/LayerNorm_final_ln'))
  out[('word_embeddings',)] = Source(('word_embeddings/word_embeddings',))
  out[('joint_positions',)] = Source(('position_embeddings/position_embeddings',))
  out.update(_norm(('joint_embed_norm',), 'position_embeddings/LayerNorm_embed_norm'))
  out[('langonly_positions',)] = Source(('langonly_embeddings/position_embeddings',))
  out.update(_norm(('langonly_embed_norm',), 'langonly_embeddings/LayerNorm_embed_norm'))
  out.update(_stack(('encoder',), 'encoder', m.num_joint_layers))
  out.update(_dense(('lm_head', 'projection'), 'lm_head/projection'))
  out.update(_norm(('lm_head', 'norm'), 'lm_head/LayerNorm'))
  out[('lm_head', 'output_bias')] = Source(('lm_head/output_bias',))
  for ours, theirs in [('contrastive_text', 'lang_proj'), ('contrastive_frame', 'viz_proj')]:
    out.update(_dense((ours, 'intermediate'), f'contrastive/{theirs}_intermediate'))
    out.update(_norm((ours, 'norm'), f'contrastive/LayerNorm_{theirs}_ln'))
    out.update(_dense((ours, 'out'), f'contrastive/{theirs}'))
  for ours, theirs in [('temporal_text_frame', 'lang_viz_temporal'), ('temporal_frame_frame', 'viz_viz_temporal')]:
    out.update(_dense((ours, 'intermediate'), f'{theirs}/intermediate'))
    out.update(_norm((ours, 'norm'), f'{theirs}/LayerNorm_ln0'))
    out.update(_dense((ours, 'logits'), f'{theirs}/logits'))
  return out


def _fmt(path: Path) -> str:
  return '.'.join(str(p) for p in path)


def convert_variables(tf_vars: Mapping[str, np.ndarray], model: nnx.Module) -> None:
  """Loads original TF variables into `model` in place; raises ConversionError listing every unknown,
  missing or mis-shaped variable."""
  mapping = tf_variable_map(model.config)
  params = nnx.state(model, nnx.Param)
  ours = traverse_util.flatten_dict(params.to_pure_dict())
  if set(ours) != set(mapping):  # a model/converter mismatch is a bug here, not in the checkpoint
    raise AssertionError(f'converter map out of date: {sorted(map(_fmt, set(ours) ^ set(mapping)))[:10]}')
  wanted = {n for src in mapping.values() for n in src.names}
  given = {n for n in tf_vars if not n.endswith(IGNORED_SUFFIXES)}
  problems = []
  if missing := sorted(wanted - given):
    problems.append(f'{len(missing)} variables the model needs are missing: {missing}')
  if unknown := sorted(given - wanted):
    problems.append(f'{len(unknown)} variables are unknown to this config: {unknown}')
  new = {}
  if not problems:
    for path, src in mapping.items():
      arrays = [np.asarray(tf_vars[n]) for n in src.names]
      try:
        value = src.transform(np.stack(arrays) if src.stacked else arrays[0])
      except (ValueError, IndexError):  # per-layer shapes differ, or too few dimensions for the transform
        problems.append(f'{", ".join(f"{n} {a.shape}" for n, a in zip(src.names, arrays, strict=True))}: cannot be '
                        f'converted, model {_fmt(path)} expects {tuple(ours[path].shape)}')
        continue
      if value.shape != tuple(ours[path].shape):
        problems.append(f'{src.names[0]}: shape {value.shape} after conversion, model {_fmt(path)} '
                        f'expects {tuple(ours[path].shape)}')
      new[path] = value.astype(np.float32)
  if problems:
    raise ConversionError('cannot convert the TF variables:\n  ' + '\n  '.join(problems))
  nnx.replace_by_pure_dict(params, traverse_util.unflatten_dict(new))
  nnx.update(model, params)


def read_tf_checkpoint(prefix: str | pathlib.Path) -> dict[str, np.ndarray]:
  """All variables of a tf.train.Saver checkpoint (needs TensorFlow: the 'data' extra, imported only here)."""
  tf = import_extra('tensorflow', 'data')

  try:
    reader = tf.train.load_checkpoint(str(prefix))
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
    raise ConversionError(f'cannot read a TF checkpoint at prefix {prefix}: {e}') from e
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
