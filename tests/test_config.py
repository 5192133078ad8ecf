"""Config: validation names the offending field, derived sizes, and every file in configs/ loads and builds."""

import pathlib
import re

import jax
import numpy as np
import pytest
from flax import nnx

from merlot_jax.config import CHOICES, ConfigError, config_names, default_config, load_config, model_sizes, validate
from merlot_jax.data import frames
from merlot_jax.models import transformer
from merlot_jax.models.merlot import MerlotModel

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (REPO / 'configs').glob('*.py') if p.name != '__init__.py')


def _tiny():
  return load_config(REPO / 'configs' / 'tiny.py')


def _set(c, dotted, value):
  *parents, leaf = dotted.split('.')
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value


# (field named in the error, {field: value} overrides on the tiny config).
IMPOSSIBLE = [
    ('model.image_size', {'model.image_size': (64, 80)}),  # 80 is not a multiple of patch * pool = 32
    ('model.image_size', {'model.image_size': (48, 96)}),
    ('model.image_size', {'model.pool_size': 3}),  # 64 x 96 not a multiple of 48
    ('model.image_size', {'model.image_size': (64, 96, 3)}),  # not (height, width)
    ('model.image_size', {'model.max_2d_positions': 2}),  # 4 x 6 patch grid does not fit the 2-D table
    ('model.patch_size', {'model.patch_size': 8, 'model.image_size': (64, 96)}),
    ('model.hidden_size', {'model.num_heads': 5}),
    ('model.hidden_size', {'model.hidden_size': 66}),
    ('model.num_segments', {'model.num_segments': 5}),
    ('model.num_segments', {'model.segments_per_group': 3}),
    ('model.resnet_blocks', {'model.resnet_blocks': (1, 1)}),
    ('model.resnet_blocks', {'model.resnet_blocks': (1, 1, 1, 1)}),
    ('model.resnet_blocks', {'model.resnet_blocks': (1, 0, 1)}),
    ('model.resnet_width', {'model.resnet_width': 48}),
    ('model.num_langonly_layers', {'model.num_langonly_layers': 3}),
    ('model.num_langonly_layers', {'model.num_langonly_layers': 0}),
    ('model.max_positions', {'model.max_positions': 31}),  # the language-only pass needs 4 * 8 = 32
    ('model.segment_length', {'model.segment_length': 1}),
    ('model.dtype', {'model.dtype': 'float16'}),
    ('model.dtype', {'model.dtype': 'bf16'}),
    ('model.remat_policy', {'model.remat_policy': 'everything'}),
    ('model.attention_impl', {'model.attention_impl': 'flash'}),
    ('model.attention_impl', {'model.attention_impl': 'cudnn'}),  # with model.dtype = 'float32'
    ('objectives.shuffled_index_offset', {'model.max_image_positions': 17}),  # rows 16, 17 needed: 18 > 17
    ('objectives.shuffled_index_offset', {'objectives.shuffled_index_offset': 1023}),
    ('objectives.temporal_pair_weighting', {'objectives.temporal_pair_weighting': 'both'}),
    ('objectives.mask_span_probs', {'objectives.mask_span_probs': (0.5, 0.25, 0.125)}),
    ('objectives.mask_replace_probs', {'objectives.mask_replace_probs': (0.1, 0.8, 0.2)}),
    ('objectives.mask_rate', {'objectives.mask_rate': 0.0}),
    ('objectives.mask_rate', {'objectives.mask_rate': 1.0}),
    ('train.global_batch_size', {'train.global_batch_size': 0}),
    ('data.augment_mode', {'data.augment_mode': 'brightness'}),
    ('optim.warmup_steps', {'optim.warmup_steps': 10}),  # tiny trains 10 steps: warmup must end before
    ('optim.warmup_steps', {'optim.warmup_steps': -1}),
]


@pytest.mark.parametrize('field,overrides', IMPOSSIBLE, ids=[f'{f}-{i}' for i, (f, _) in enumerate(IMPOSSIBLE)])
def test_impossible_setting_fails_naming_the_field(field, overrides):
  c = _tiny()
  for k, v in overrides.items():
    _set(c, k, v)
  with pytest.raises(ConfigError) as e:
    validate(c)
  message = str(e.value)
  assert f'config.{field} ' in message, message
  # The message says what value is wrong.
  bad_field, bad_value = next(iter(overrides.items()))
  if bad_field == field:
    assert repr(bad_value) in message or str(bad_value) in message, message


@pytest.mark.parametrize('field', ['model.num_vision_layers', 'model.num_joint_layers', 'model.mlp_dim',
                                   'model.contrastive_size', 'model.vocab_size'])
def test_zero_sized_model_fields_fail_at_validate(field):
  """A zero-sized stack or layer cannot be built; validate should say which field."""
  c = _tiny()
  _set(c, field, 0)
  with pytest.raises(ConfigError) as e:
    validate(c)
  # num_joint_layers = 0 is reported through num_langonly_layers (1 <= N <= joint layers).
  allowed = {field, 'model.num_langonly_layers'} if field == 'model.num_joint_layers' else {field}
  assert any(f'config.{f} ' in str(e.value) for f in allowed), str(e.value)


@pytest.mark.parametrize('field,value', [('model.num_heads', 0), ('model.pool_size', 0)])
def test_zero_divisor_fields_raise_config_error_not_zero_division(field, value):
  c = _tiny()
  _set(c, field, value)
  with pytest.raises(ConfigError, match=re.escape(f'config.{field} ')):
    validate(c)


def test_cudnn_attention_needs_bfloat16():
  c = _tiny()
  c.model.attention_impl = 'cudnn'
  with pytest.raises(ConfigError, match=r"set model.dtype = 'bfloat16' \(not 'float32'\)"):
    validate(c)
  c.model.dtype = 'bfloat16'
  assert validate(c) is c


def test_valid_configs_pass_unchanged():
  c = _tiny()
  assert validate(c) is c
  validate(default_config())
  # Edge cases that are allowed: language-only pass with fewer layers, offset exactly at the limit.
  c.model.num_langonly_layers = 1
  c.model.max_image_positions = 18
  c.model.max_positions = 32
  validate(c)


def test_model_sizes_match_reference_a_readme():
  """Numbers from tests/golden/tf_reference_A/README.md ("Shapes (config A)")."""
  s = model_sizes(_tiny().model)
  assert (s.grid_h, s.grid_w, s.pooled_h, s.pooled_w) == (4, 6, 2, 3)
  assert s.tokens_per_frame == 7
  assert s.groups_per_video == 2
  assert (s.visual_len, s.text_len, s.joint_len) == (14, 16, 30)
  assert s.video_text_len == 32


def test_model_sizes_paper_model():
  """Paper model: 192 x 352 images -> 12 x 22 patches -> 6 x 11 pooled; 4 segments of 32 tokens per group."""
  s = model_sizes(default_config().model)
  assert (s.grid_h, s.grid_w, s.pooled_h, s.pooled_w) == (12, 22, 6, 11)
  assert s.tokens_per_frame == 67
  assert (s.visual_len, s.text_len, s.joint_len) == (4 * 67, 128, 4 * 67 + 128)
  assert s.video_text_len == 512


def test_load_config_missing_file(tmp_path):
  path = tmp_path / 'nope.py'
  with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
    load_config(path)


def test_load_config_without_get_config(tmp_path):
  path = tmp_path / 'no_getter.py'
  path.write_text('X = 1\n')
  with pytest.raises(ConfigError, match='get_config'):
    load_config(path)
  try:
    load_config(path)
  except ConfigError as e:
    assert str(path) in str(e)


def test_load_config_validates(tmp_path):
  path = tmp_path / 'bad.py'
  path.write_text('from merlot_jax.config import default_config\n'
                  'def get_config():\n'
                  '  c = default_config()\n'
                  '  c.model.num_heads = 7\n'
                  '  return c\n')
  with pytest.raises(ConfigError, match=re.escape('config.model.hidden_size ')):
    load_config(path)


def test_configs_folder_has_base_and_tiny():
  names = {p.name for p in CONFIG_FILES}
  assert {'base.py', 'tiny.py'} <= names, names


def test_every_config_loads_by_name_from_any_directory(tmp_path, monkeypatch):
  """load_config('tiny') finds configs/tiny.py as the installed merlot_jax.configs.tiny, whatever the cwd."""
  monkeypatch.chdir(tmp_path)
  assert config_names() == [p.stem for p in CONFIG_FILES]
  for path in CONFIG_FILES:
    assert load_config(path.stem).to_dict() == load_config(path).to_dict(), path.stem


def test_an_unknown_config_names_the_path_and_the_names(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config 'tiny2': no such file, and not a config name \(one of \['base'"):
    load_config('tiny2')


@pytest.mark.parametrize('path', CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_every_config_file_loads_validates_and_builds(path):
  c = load_config(path)
  assert validate(c) is c
  model = nnx.eval_shape(lambda: MerlotModel(c.model, rngs=nnx.Rngs(params=0)))
  params = nnx.state(model, nnx.Param)
  leaves = jax.tree.leaves(params)
  assert leaves
  assert all(leaf.dtype == np.float32 for leaf in leaves)  # parameters are float32 whatever the compute dtype
  # Nothing was allocated: eval_shape leaves are shapes only.
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
  # The shared tables have the configured sizes.
  m = c.model
  assert params['word_embeddings'].shape == (m.vocab_size, m.hidden_size)
  assert params['encoder']['layers']['mlp']['intermediate']['kernel'].shape == (
      m.num_joint_layers, m.hidden_size, m.mlp_dim)
  assert params['vision']['transformer']['layers']['attn']['query']['kernel'].shape == (
      m.num_vision_layers, m.hidden_size, m.hidden_size)


def test_base_config_is_the_paper_model():
  """model/configs/merlot.yaml of the original: 12 layers of 768, 12 heads, GPT-2 BPE + 100 vocabulary."""
  m = load_config(REPO / 'configs' / 'base.py').model
  assert (m.hidden_size, m.num_heads, m.mlp_dim) == (768, 12, 3072)
  assert (m.num_vision_layers, m.num_joint_layers, m.num_langonly_layers) == (12, 12, 12)
  assert tuple(m.image_size) == (192, 352) and tuple(m.resnet_blocks) == (3, 4, 9)
  assert (m.num_segments, m.segment_length, m.segments_per_group) == (16, 32, 4)
  assert m.vocab_size == 50370


def test_every_enumeration_is_defined_once_and_checked():
  """Each CHOICES field's default is one of its values, every value validates (cudnn needs bfloat16), and the
  code that dispatches on the field knows exactly these values."""
  for field, choices in CHOICES.items():
    section, name = field.split('.')
    assert default_config()[section][name] in choices, field
    for value in choices:
      c = _tiny()
      c[section][name] = value
      if value == 'cudnn':
        c.model.dtype = 'bfloat16'
      validate(c)
  assert {'none', *transformer.REMAT_POLICIES} == set(CHOICES['model.remat_policy'])
  assert frames.AUGMENT_MODES == CHOICES['data.augment_mode']

