"""Configuration: the full default tree, validation, and derived sizes.

Config files in `configs/` start from `default_config()` and override fields; `validate()` runs on
every config before use so that an impossible setting fails at once with the field named.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pathlib
import pkgutil

import ml_collections


class ConfigError(ValueError):
  """A config field holds a value the model or the trainer cannot use."""


# The values of each enumerated field, defined once: `validate` checks them, the scripts' enum flags list
# them, and the code that dispatches on a field asserts that it covers exactly these.
CHOICES: dict[str, tuple[str, ...]] = {
    'model.dtype': ('float32', 'bfloat16'),
    'model.remat_policy': ('none', 'full', 'dots_saveable'),
    # xla: the original's softmax math; fused: jax.nn.dot_product_attention; cudnn: its cuDNN kernel (GPU, bf16)
    'model.attention_impl': ('xla', 'fused', 'cudnn'),
    # original: the released code's behaviour; intended: what its comments describe (see the functions that read them)
    'objectives.temporal_pair_weighting': ('original', 'intended'),
    'data.augment_mode': ('original', 'intended'),
}


# Image-index rows from here on stand for 'position unknown': the released code's easy-frame test is
# `index < 64` (pretraining/objectives.py) and zero-shot story ordering draws its images' rows from 64 up.
UNKNOWN_POSITION_ROW = 64


def default_config() -> ml_collections.ConfigDict:
  """The paper's MERLOT (model/configs/merlot.yaml of the original) with every field the code reads."""
  c = ml_collections.ConfigDict()

  c.model = m = ml_collections.ConfigDict()
  # Video layout: an example is `num_segments` segments of `segment_length` tokens; the joint encoder
  # sees `segments_per_group` consecutive segments (frames + transcripts) at a time.
  m.num_segments = 16
  m.segment_length = 32
  m.segments_per_group = 4
  # Vision.
  m.image_size = (192, 352)  # (height, width)
  m.patch_size = 16  # the lite ResNet has stride 16
  m.pool_size = 2  # average pooling of the ViT patch grid before the joint encoder
  m.resnet_blocks = (3, 4, 9)  # bottleneck blocks per stage; exactly 3 stages (stride 16)
  m.resnet_width = 64
  m.num_cls_tokens = 2  # CLS 0 feeds the joint encoder, CLS 1 is the contrastive target
  m.max_2d_positions = 64  # side of the 2-D position tables
  # Transformers.
  m.hidden_size = 768
  m.num_heads = 12
  m.mlp_dim = 3072
  m.num_vision_layers = 12
  m.num_joint_layers = 12
  m.num_langonly_layers = 12  # the language-only pass runs the first N joint layers (shared weights)
  m.vocab_size = 50370
  m.max_positions = 1024
  m.max_image_positions = 1024  # rows of the image-index table (16+ are the 'shuffled' rows)
  m.contrastive_size = 768
  m.dropout_rate = 0.1
  m.init_std = 0.02
  # Execution.
  m.dtype = 'float32'  # compute dtype; parameters are always float32
  m.scan_layers = True
  m.remat_policy = 'none'  # see CHOICES
  m.attention_impl = 'xla'  # see CHOICES

  c.objectives = o = ml_collections.ConfigDict()
  o.mask_rate = 0.2
  o.mask_use_attention = True
  o.mask_topk_fraction = 0.2  # 'most attended' = top 20% of the language-only pass's attention
  o.mask_topk_prob = 0.5  # half of the picks come from that top set
  o.mask_span_probs = (0.625, 0.25, 0.125)  # span extension by 0/1/2 on each side
  o.mask_replace_probs = (0.1, 0.8, 0.1)  # keep / MASK / random token
  o.contrast_temperature = 0.05
  o.contrast_weight = 0.25
  o.contrast_center = False  # True: subtract each side's batch-mean projection first (not in the original)
  o.temporal_weight = 1.0
  o.image_shuffle_prob = 0.4
  o.shuffled_index_offset = 16  # shuffled frames use image-index rows offset + permutation
  # 'original': the released code's test (index < 64) marks every pair easy, so every pair gets 0.01.
  # 'intended': only pairs of two unshuffled frames get 0.01; pairs with a shuffled frame get 1.
  o.temporal_pair_weighting = 'original'
  o.temporal_easy_weight = 0.01

  c.data = d = ml_collections.ConfigDict()
  d.train_pattern = ''
  d.eval_pattern = ''
  d.clean_asr_prob = 0.5
  d.random_scale_min = 1.125
  d.random_scale_max = 1.5
  d.augment_prob = 0.8
  # 'original': the released code's augmentation, whose branch lambdas all call the last transform
  # (so 'brightness,contrast' always applies contrast); 'intended': brightness or contrast 50/50.
  d.augment_mode = 'original'
  d.shuffle_segments = True
  d.shuffle_buffer = 1024
  d.seed = 0

  c.optim = p = ml_collections.ConfigDict()
  p.learning_rate = 3e-4
  p.warmup_steps = 10_000
  p.b1 = 0.9
  p.b2 = 0.98
  p.eps = 1e-6
  p.weight_decay = 0.1
  p.clip_norm = 0.0  # 0 disables clipping
  p.bf16_moments = True

  c.train = t = ml_collections.ConfigDict()
  t.global_batch_size = 1024  # videos (examples of num_segments segments)
  t.total_steps = 460_000
  t.log_every = 100
  t.checkpoint_every = 1000
  t.keep_checkpoints = 3
  t.eval_every = 0  # steps between evaluations on data.eval_pattern; 0: none
  t.eval_steps = 10  # batches per evaluation
  t.max_consecutive_skips = 5  # non-finite steps in a row (each skipped, params unchanged) before the run stops
  t.seed = 0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1
  c.mesh.fsdp = -1  # -1: whatever devices are left
  c.mesh.tensor = 1
  return c


@dataclasses.dataclass(frozen=True)
class ModelSizes:
  """Sizes derived from the model config (names follow the golden reference README)."""

  grid_h: int  # ViT patch grid
  grid_w: int
  pooled_h: int  # after the pool_size x pool_size average pool
  pooled_w: int
  tokens_per_frame: int  # 1 CLS + pooled grid
  groups_per_video: int
  visual_len: int  # P: visual tokens per group
  text_len: int  # L: language tokens per group
  joint_len: int  # S = P + L
  video_text_len: int  # tokens of the language-only pass (whole video)


def model_sizes(m: ml_collections.ConfigDict) -> ModelSizes:
  h, w = m.image_size
  gh, gw = h // m.patch_size, w // m.patch_size
  ph, pw = gh // m.pool_size, gw // m.pool_size
  per_frame = 1 + ph * pw
  visual = per_frame * m.segments_per_group
  text = m.segment_length * m.segments_per_group
  return ModelSizes(gh, gw, ph, pw, per_frame, m.num_segments // m.segments_per_group, visual, text,
                    visual + text, m.num_segments * m.segment_length)


def _require(ok: bool, field: str, value, why: str) -> None:
  if not ok:
    raise ConfigError(f'config.{field} = {value!r}: {why}')


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError naming the first impossible setting; returns the config unchanged."""
  m = c.model
  _require(len(m.image_size) == 2, 'model.image_size', m.image_size, 'must be (height, width)')
  for field in ('patch_size', 'pool_size', 'hidden_size', 'num_heads', 'mlp_dim', 'num_vision_layers',
                'num_joint_layers', 'vocab_size', 'contrastive_size', 'num_segments', 'segments_per_group'):
    _require(m[field] >= 1, f'model.{field}', m[field], 'must be a positive integer')
  h, w = m.image_size
  stride = m.patch_size * m.pool_size
  _require(h % stride == 0 and w % stride == 0, 'model.image_size', m.image_size,
           f'height and width must be multiples of patch_size * pool_size = {stride}')
  _require(m.patch_size == 16, 'model.patch_size', m.patch_size,
           'the lite ResNet stem has a fixed stride of 16 (stem 4 x two pooled stages)')
  _require(len(m.resnet_blocks) == 3 and all(b >= 1 for b in m.resnet_blocks), 'model.resnet_blocks',
           m.resnet_blocks, 'must be 3 positive block counts (one per stage, stride 16 overall)')
  _require(m.resnet_width % 32 == 0 and m.resnet_width >= 64, 'model.resnet_width', m.resnet_width,
           'GroupNorm uses 32 groups, and the stem halves the width: use a multiple of 64')
  _require(m.hidden_size % m.num_heads == 0, 'model.hidden_size', m.hidden_size,
           f'must be divisible by model.num_heads = {m.num_heads}')
  _require(m.num_segments % m.segments_per_group == 0, 'model.num_segments', m.num_segments,
           f'must be divisible by model.segments_per_group = {m.segments_per_group}')
  _require(1 <= m.num_langonly_layers <= m.num_joint_layers, 'model.num_langonly_layers',
           m.num_langonly_layers, f'the language-only pass shares the first N of the '
           f'{m.num_joint_layers} joint layers, so 1 <= N <= num_joint_layers')
  s = model_sizes(m)
  _require(s.grid_h <= m.max_2d_positions and s.grid_w <= m.max_2d_positions, 'model.image_size',
           m.image_size, f'the patch grid {s.grid_h}x{s.grid_w} exceeds max_2d_positions = {m.max_2d_positions}')
  _require(s.video_text_len <= m.max_positions, 'model.max_positions', m.max_positions,
           f'the language-only pass needs num_segments * segment_length = {s.video_text_len} positions')
  _require(m.segment_length >= 2, 'model.segment_length', m.segment_length, 'needs the start token and text')
  for field, choices in CHOICES.items():
    section, name = field.split('.')
    _require(c[section][name] in choices, field, c[section][name], f'must be one of {", ".join(choices)}')
  _require(m.attention_impl != 'cudnn' or m.dtype == 'bfloat16', 'model.attention_impl', m.attention_impl,
           f"cuDNN flash attention takes bfloat16 inputs only: set model.dtype = 'bfloat16' (not {m.dtype!r})")
  o = c.objectives
  max_index = o.shuffled_index_offset + m.segments_per_group
  _require(max_index <= m.max_image_positions, 'objectives.shuffled_index_offset', o.shuffled_index_offset,
           f'shuffled frames use rows up to {max_index}, beyond max_image_positions = {m.max_image_positions}')
  _require(abs(sum(o.mask_span_probs) - 1) < 1e-6, 'objectives.mask_span_probs', o.mask_span_probs,
           'must sum to 1')
  _require(abs(sum(o.mask_replace_probs) - 1) < 1e-6, 'objectives.mask_replace_probs', o.mask_replace_probs,
           'must sum to 1')
  _require(0 < o.mask_rate < 1, 'objectives.mask_rate', o.mask_rate, 'must be in (0, 1)')
  t = c.train
  _require(t.global_batch_size >= 1, 'train.global_batch_size', t.global_batch_size, 'must be positive')
  _require(t.max_consecutive_skips >= 1, 'train.max_consecutive_skips', t.max_consecutive_skips,
           'must be at least 1 (the number of non-finite steps in a row that stops the run)')
  for field in ('log_every', 'checkpoint_every', 'keep_checkpoints'):
    _require(t[field] >= 1, f'train.{field}', t[field], 'must be a positive integer')
  _require(0 <= c.optim.warmup_steps < t.total_steps, 'optim.warmup_steps', c.optim.warmup_steps,
           f'must be in [0, train.total_steps = {t.total_steps}): the schedule warms up, then decays to 0')
  return c


def config_names() -> list[str]:
  """The configs that `load_config` finds by name: configs/*.py, installed as merlot_jax.configs."""
  import merlot_jax.configs  # noqa: PLC0415 - the package only, its modules on demand

  return sorted(m.name for m in pkgutil.iter_modules(merlot_jax.configs.__path__))


def load_config(name_or_path: str | os.PathLike) -> ml_collections.ConfigDict:
  """`get_config()` of a config, validated: by name ('tiny', 'base', 'demo', 'finetune_vcr', ...: see
  `config_names()`), from any directory, or from a config file's path."""
  text = os.fspath(name_or_path)
  if text in config_names():
    module = importlib.import_module(f'merlot_jax.configs.{text}')
    where = f'merlot_jax.configs.{text}'
  else:
    path = pathlib.Path(text)
    if not path.is_file():
      raise FileNotFoundError(f'config {text!r}: no such file, and not a config name (one of {config_names()})')
    spec = importlib.util.spec_from_file_location(f'_merlot_config_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    where = str(path)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{where} has no get_config() function')
  return validate(module.get_config())
