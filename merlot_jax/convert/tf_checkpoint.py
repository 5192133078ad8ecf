"""Original TF MERLOT variables (rowanz/merlot) -> merlot_jax parameters.

`tf_variable_map(model_config)` lists, for every parameter of `MerlotModel`, the TF variable(s) it
comes from and how the layout changes (per-layer variables are stacked on a leading axis, 1x1 convs
become dense kernels, the leading singleton of the 2-D tables is dropped). The map is built from the
config alone, so a converted checkpoint is checked name by name and shape by shape.

`convert_variables` checks names, dtypes and shapes against a checkpoint's index before reading any data,
then reads only the variables it maps, one at a time, into preallocated float32 parameters: a training
checkpoint's optimizer slots (as large as the model) are never read, and bfloat16 or float16 variables are
cast on the way in. Peak memory is about the float32 parameters plus one variable (docs/fidelity.md).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np
from flax import nnx, traverse_util

from merlot_jax.extras import import_extra

Path = tuple[str | int, ...]
# The slots the original's AdamOptimizer (utils/optimization.py) creates for every trained variable NAME:
# NAME/adam_m and NAME/adam_v, float32, or bfloat16 with `use_bfloat16_adam` (adam_v then stores a sign-bit
# trick, not plain bfloat16). It has no other optimizer: `adafactor=True` raises.
OPTIMIZER_SLOTS = ('adam_m', 'adam_v')
STEP_COUNTER = 'global_step'  # tf.train.get_or_create_global_step's variable
# Stored dtypes a parameter may come from (cast to float32 on reading).
FLOAT_DTYPES = ('float32', 'bfloat16', 'float16', 'float64')


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


@dataclasses.dataclass(frozen=True)
class VariableReader:
  """Where TF variables come from: an index (name -> shape, name -> dtype name; no data read) and a function
  that reads one variable, so a conversion reads only what it maps, one variable at a time."""
  shapes: Mapping[str, tuple[int, ...]]
  dtypes: Mapping[str, str]
  read: Callable[[str], Any]
  origin: str = 'the TF variables'

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, Any]) -> VariableReader:
    """Variables already in memory (e.g. `dict(np.load('variables.npz'))`)."""
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    return cls({n: a.shape for n, a in arrays.items()}, {n: a.dtype.name for n, a in arrays.items()},
               arrays.__getitem__)


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
  """What a conversion read and what it skipped unread, by kind."""
  converted: int  # TF variables read
  parameters: int  # their values
  cast: Mapping[str, int]  # stored dtype -> variables cast to float32
  slots: Mapping[str, int]  # optimizer slot name -> variables skipped
  slot_values: int  # the skipped slots' values
  step_counter: tuple[str, ...]  # skipped

  def __str__(self) -> str:
    cast = ', '.join(f'{n} cast from {dtype} to float32' for dtype, n in sorted(self.cast.items()))
    lines = [f'converted {self.converted} TF variables: {self.parameters:,} parameters' +
             (f' ({cast})' if cast else '')]
    if self.slots:
      per_slot = ', '.join(f'{name} {n}' for name, n in sorted(self.slots.items()))
      lines.append(f'skipped {sum(self.slots.values())} optimizer slots, never read: {per_slot} '
                   f'({self.slot_values:,} values)')
    if self.step_counter:
      lines.append(f'skipped the step counter: {", ".join(self.step_counter)}')
    return '\n'.join(lines)


def _slot(name: str) -> str | None:
  """The optimizer slot a variable name is (adam_m / adam_v), or None."""
  head, _, last = name.rpartition('/')
  return last if head and last in OPTIMIZER_SLOTS else None


def _shape_after(src: Source, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
  """The converted shape, from the stored shapes alone (the transform runs on a zero-stride view)."""
  if src.stacked:
    if len(set(shapes)) > 1:
      raise ValueError('per-layer shapes differ')
    return (len(shapes),) + shapes[0]
  return src.transform(np.broadcast_to(np.float32(0), shapes[0])).shape


def _split(reader: VariableReader, mapping: Mapping[Path, Source]) -> tuple[list[str], list[str], set[str], set[str]]:
  """The index's names by kind: (optimizer slots, step counters, the rest; and the names the model wants)."""
  slots = [n for n in reader.shapes if _slot(n)]
  steps = [n for n in reader.shapes if n == STEP_COUNTER]
  wanted = {n for src in mapping.values() for n in src.names}
  return slots, steps, set(reader.shapes) - set(slots) - set(steps), wanted


def _check_index(reader: VariableReader, mapping: Mapping[Path, Source], ours: Mapping[Path, Any]) -> list[str]:
  """Names, dtypes and shapes against the model, from the index alone: every problem found."""
  _, _, given, wanted = _split(reader, mapping)
  problems = []
  if missing := sorted(wanted - given):
    problems.append(f'{len(missing)} variables the model needs are missing: {missing}')
  if unknown := sorted(given - wanted):
    problems.append(f'{len(unknown)} variables are unknown to this config: {unknown}')
  if not_float := sorted(f'{n} ({reader.dtypes[n]})' for n in wanted & given if reader.dtypes[n] not in FLOAT_DTYPES):
    problems.append(f'{len(not_float)} variables are not floating point ({", ".join(FLOAT_DTYPES)}): {not_float}')
  for path, src in ([] if missing else mapping.items()):
    shapes = [tuple(reader.shapes[n]) for n in src.names]
    expected = tuple(ours[path].shape)
    try:
      converted = _shape_after(src, shapes)
    except (ValueError, IndexError):  # per-layer shapes differ, or too few dimensions for the transform
      problems.append(f'{", ".join(f"{n} {s}" for n, s in zip(src.names, shapes, strict=True))}: cannot be '
                      f'converted, model {_fmt(path)} expects {expected}')
      continue
    if converted != expected:
      problems.append(f'{src.names[0]}: shape {converted} after conversion, model {_fmt(path)} expects {expected}')
  return problems


def _summarize(reader: VariableReader, mapping: Mapping[Path, Source]) -> ConversionSummary:
  """What a conversion that passed `_check_index` reads and skips, from the index alone."""
  slots, steps, _, wanted = _split(reader, mapping)
  size = lambda names: sum(int(np.prod(reader.shapes[n])) for n in names)
  stored = [reader.dtypes[n] for n in wanted]
  per_slot = [_slot(n) for n in slots]
  return ConversionSummary(
      converted=len(wanted), parameters=size(wanted),
      cast={d: stored.count(d) for d in sorted(set(stored) - {'float32'})},
      slots={s: per_slot.count(s) for s in sorted(set(per_slot))}, slot_values=size(slots),
      step_counter=tuple(steps))


def _read(reader: VariableReader, name: str) -> np.ndarray:
  """One variable, checked against the index (a reader that disagrees with its index is caught here)."""
  value = np.asarray(reader.read(name))
  if value.shape != tuple(reader.shapes[name]):
    raise ConversionError(f'{reader.origin}: {name} read with shape {value.shape}, its index says '
                          f'{tuple(reader.shapes[name])}')
  return value


def _load(reader: VariableReader, src: Source, shape: tuple[int, ...]) -> np.ndarray:
  """One parameter: its variable(s) read one at a time straight into a float32 array (cast on assignment)."""
  out = np.empty(shape, np.float32)
  if src.stacked:
    for i, name in enumerate(src.names):
      out[i] = _read(reader, name)
  else:
    out[...] = src.transform(_read(reader, src.names[0]))
  return out


def convert_variables(variables: Mapping[str, Any] | VariableReader, model: nnx.Module) -> ConversionSummary:
  """Loads original TF variables (in memory, or a `VariableReader` such as `open_tf_checkpoint`'s) into
  `model` in place, reading only those it maps; raises ConversionError listing every unknown, missing,
  mis-typed or mis-shaped variable before anything is read. Optimizer slots and global_step are skipped."""
  reader = variables if isinstance(variables, VariableReader) else VariableReader.from_arrays(variables)
  mapping = tf_variable_map(model.config)
  params = nnx.state(model, nnx.Param)
  ours = traverse_util.flatten_dict(params.to_pure_dict())
  if set(ours) != set(mapping):  # a model/converter mismatch is a bug here, not in the checkpoint
    raise AssertionError(f'converter map out of date: {sorted(map(_fmt, set(ours) ^ set(mapping)))[:10]}')
  if problems := _check_index(reader, mapping, ours):
    raise ConversionError(f'cannot convert {reader.origin}:\n  ' + '\n  '.join(problems))
  new = {path: _load(reader, src, tuple(ours[path].shape)) for path, src in mapping.items()}
  nnx.replace_by_pure_dict(params, traverse_util.unflatten_dict(new))
  nnx.update(model, params)
  return _summarize(reader, mapping)


def open_tf_checkpoint(prefix: str | pathlib.Path) -> VariableReader:
  """A tf.train.Saver checkpoint's index and reader; reads no variable (needs TensorFlow: the 'data' extra,
  imported only here). A bfloat16 variable reads as an ml_dtypes bfloat16 array."""
  tf = import_extra('tensorflow', 'data')

  try:
    reader = tf.train.load_checkpoint(str(prefix))
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
    raise ConversionError(f'cannot read a TF checkpoint at prefix {prefix}: {e}') from e
  shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
  dtypes = {name: dtype.name for name, dtype in reader.get_variable_to_dtype_map().items()}
  return VariableReader(shapes, dtypes, reader.get_tensor, f'the TF checkpoint {prefix}')
