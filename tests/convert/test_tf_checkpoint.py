"""TF checkpoint -> merlot_jax: reading the golden tf.train.Saver checkpoint, the variable map against the
paper model's 597 variables, conversion errors, and the conversion / parameter-count scripts."""

import functools
import gzip
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from merlot_jax.config import load_config
from merlot_jax.convert.tf_checkpoint import ConversionError, convert_variables, read_tf_checkpoint, tf_variable_map
from merlot_jax.models.merlot import MerlotModel
from merlot_jax.workdir import read_config, restore_params
from tests.convert import tf_layout
from tests.models.testlib import REPO
from tests.script_runner import run_script


def _env():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # one device is enough for the scripts
  return env


def _script(name, *args):
  return subprocess.Popen([sys.executable, str(REPO / 'scripts' / name), *map(str, args)], cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


@pytest.fixture(scope='module')
def golden_vars(golden_dir):
  return dict(np.load(golden_dir / 'variables.npz'))


@pytest.fixture(scope='module')
def ckpt_prefix(golden_dir, tmp_path_factory):
  """The golden checkpoint unpacked as the README says: index copied, data shard gunzipped next to it."""
  folder = tmp_path_factory.mktemp('golden_ckpt')
  shutil.copy(golden_dir / 'ckpt' / 'model.ckpt.index', folder / 'model.ckpt.index')
  with gzip.open(golden_dir / 'ckpt' / 'model.ckpt.data-00000-of-00001.gz', 'rb') as src, \
       open(folder / 'model.ckpt.data-00000-of-00001', 'wb') as dst:
    shutil.copyfileobj(src, dst)
  return folder / 'model.ckpt'


@pytest.fixture(scope='module')
def reference_config_file(golden_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp('cfg') / 'reference_a.py'
  path.write_text('import json\n'
                  'from merlot_jax.convert.parity import config_from_reference\n\n\n'
                  'def get_config():\n'
                  f'  return config_from_reference(json.load(open({str(golden_dir / "config.json")!r})))\n')
  return path


@pytest.fixture(scope='module')
def scripts_running(ckpt_prefix, reference_config_file, tmp_path_factory):
  """Start the two command-line runs at once (they overlap with the in-process tests on 2 cores)."""
  out_dir = tmp_path_factory.mktemp('converted') / 'params_a'
  return {'convert': (_script('convert_tf_checkpoint.py', ckpt_prefix, out_dir, '--config', reference_config_file),
                      out_dir),
          'count': _script('count_params.py', '--config', REPO / 'configs' / 'base.py')}


@pytest.fixture(scope='module')
def base_variables(base_variables_file):
  """merlot_base_variables.txt: (total from the first line, {name: shape})."""
  lines = base_variables_file.read_text().splitlines()
  total = int(re.match(r'total_params:\s*(\d+)', lines[0]).group(1))
  shapes = {}
  for line in lines[1:]:
    if line.strip():
      name, shape = line.split('\t')
      shapes[name] = tuple(int(d) for d in re.findall(r'\d+', shape))
  return total, shapes


@functools.cache
def _tiny_graph():
  c = load_config(REPO / 'configs' / 'tiny.py')
  return nnx.split(nnx.eval_shape(lambda: MerlotModel(c.model, rngs=nnx.Rngs(params=0))))


def _tiny_abstract():
  """A fresh shapes-only tiny model (new Variables on every call; the shape leaves are immutable)."""
  graphdef, state = _tiny_graph()
  return nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, state))  # copies the Variables


def _params(model):
  return nnx.state(model, nnx.Param).to_pure_dict()


def _assert_trees_equal(got, expected):
  got, expected = traverse_util.flatten_dict(got), traverse_util.flatten_dict(expected)
  assert set(got) == set(expected), sorted(map(str, set(got) ^ set(expected)))[:10]
  for path in expected:
    np.testing.assert_array_equal(np.asarray(got[path]), expected[path], err_msg=str(path))


# --- reading -------------------------------------------------------------------------------------------


def test_read_tf_checkpoint_equals_variables_npz(ckpt_prefix, golden_vars, scripts_running):
  tf_vars = read_tf_checkpoint(ckpt_prefix)
  assert set(tf_vars) == set(golden_vars)
  assert len(tf_vars) == 160  # README: 160 variables, 2,890,408 parameters
  assert sum(v.size for v in tf_vars.values()) == 2_890_408
  for name, value in golden_vars.items():
    assert tf_vars[name].dtype == np.float32, name
    np.testing.assert_array_equal(tf_vars[name], value, err_msg=name)


def test_read_tf_checkpoint_bad_prefix(tmp_path):
  with pytest.raises(ConversionError, match=re.escape(str(tmp_path / 'nothing'))):
    read_tf_checkpoint(tmp_path / 'nothing')


# --- converting ----------------------------------------------------------------------------------------


def test_convert_golden_variables_matches_the_documented_layout(golden_vars):
  model = _tiny_abstract()
  convert_variables(golden_vars, model)
  expected = tf_layout.to_ours(golden_vars, tf_layout.entries_for(model.config))
  _assert_trees_equal(_params(model), expected)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(_params(model)))


def test_tf_layout_covers_the_golden_variables_exactly(golden_vars):
  names = tf_layout.tf_names(tf_layout.entries_for(load_config(REPO / 'configs' / 'tiny.py').model))
  assert len(names) == len(set(names)) and set(names) == set(golden_vars)


@pytest.mark.parametrize('name', ['encoder/layer01/output/bias', 'lm_head/output_bias',
                                  'vision_backbone/vision_transformer/resnet50lite/block_group3/conv2d_2/kernel'])
def test_missing_variable_is_named(golden_vars, name):
  tf_vars = {k: v for k, v in golden_vars.items() if k != name}
  with pytest.raises(ConversionError, match='missing') as e:
    convert_variables(tf_vars, _tiny_abstract())
  assert name in str(e.value)


def test_unknown_variable_is_named(golden_vars):
  tf_vars = dict(golden_vars, **{'encoder/layer02/output/bias': np.zeros(64, np.float32),
                                 'some_new_head/kernel': np.zeros((64, 3), np.float32)})
  with pytest.raises(ConversionError, match='unknown') as e:
    convert_variables(tf_vars, _tiny_abstract())
  assert 'encoder/layer02/output/bias' in str(e.value) and 'some_new_head/kernel' in str(e.value)


def test_missing_and_unknown_are_listed_together(golden_vars):
  tf_vars = dict(golden_vars)
  del tf_vars['word_embeddings/word_embeddings']
  tf_vars['word_embedding/word_embeddings'] = golden_vars['word_embeddings/word_embeddings']
  with pytest.raises(ConversionError) as e:
    convert_variables(tf_vars, _tiny_abstract())
  assert 'word_embeddings/word_embeddings' in str(e.value) and 'word_embedding/word_embeddings' in str(e.value)


@pytest.mark.parametrize('name,shape', [
    ('encoder/layer00/intermediate/kernel', (64, 64)),
    ('vision_backbone/img_idx_pe', (512, 64)),
    ('vision_backbone/vision_transformer/conv_postresnet_proj/kernel', (1, 1, 1024, 32)),
    ('vision_backbone/final_pe/pos_embs', (1, 32, 32, 64)),
    ('vision_backbone/final_pe/cls_emb', (64,)),  # too few dimensions for the [1, ...] -> [...] transform
])
def test_wrong_shape_is_named_with_both_shapes(golden_vars, name, shape):
  tf_vars = dict(golden_vars, **{name: np.zeros(shape, np.float32)})
  model = _tiny_abstract()
  with pytest.raises(ConversionError) as e:
    convert_variables(tf_vars, model)
  message = str(e.value)
  assert name in message and 'expects' in message, message
  # Nothing was loaded into the model.
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(_params(model)))


def test_optimizer_slots_and_global_step_are_ignored(golden_vars):
  tf_vars = dict(golden_vars)
  for name in list(golden_vars)[:5]:
    tf_vars[f'{name}/adam_m'] = np.full_like(golden_vars[name], 7.0)
    tf_vars[f'{name}/adam_v'] = np.full_like(golden_vars[name], 9.0)
  tf_vars['global_step'] = np.asarray(460000, np.int64)
  model = _tiny_abstract()
  convert_variables(tf_vars, model)
  _assert_trees_equal(_params(model), tf_layout.to_ours(golden_vars, tf_layout.entries_for(model.config)))


# --- the paper model's variables -----------------------------------------------------------------------


def test_variable_map_covers_exactly_the_597_variables_of_the_paper_model(base_variables):
  total, shapes = base_variables
  assert len(shapes) == 597
  assert sum(int(np.prod(s)) for s in shapes.values()) == total
  config = load_config(REPO / 'configs' / 'base.py')
  mapping = tf_variable_map(config.model)
  used = [n for src in mapping.values() for n in src.names]
  assert len(used) == len(set(used)), 'a TF variable feeds two parameters'
  assert set(used) == set(shapes), (sorted(set(used) - set(shapes))[:5], sorted(set(shapes) - set(used))[:5])
  # Shapes after the documented transforms equal the model's parameter shapes.
  model = nnx.eval_shape(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0)))
  ours = traverse_util.flatten_dict(_params(model))
  assert set(ours) == set(mapping)
  for path, src in mapping.items():
    structs = [jax.ShapeDtypeStruct(shapes[n], jnp.float32) for n in src.names]
    converted = jax.eval_shape(lambda *xs, src=src: src.transform(jnp.stack(xs) if src.stacked else xs[0]), *structs)
    assert converted.shape == ours[path].shape, (path, src.names[0])
  # The independent layout of tests/convert/tf_layout.py agrees on the names.
  assert set(tf_layout.tf_names(tf_layout.entries_for(config.model))) == set(shapes)
  assert sum(int(np.prod(leaf.shape)) for leaf in ours.values()) == total


def test_count_params_script_prints_the_paper_total(base_variables, scripts_running):
  total, shapes = base_variables
  code, out, err = _finish(scripts_running['count'])
  assert code == 0, err[-3000:]
  last = out.strip().splitlines()[-1]
  assert last == f'total parameters: {total}', last
  assert total == sum(int(np.prod(s)) for s in shapes.values())


def test_convert_script_writes_a_checkpoint_that_restores(scripts_running, golden_vars):
  proc, out_dir = scripts_running['convert']
  code, out, err = _finish(proc)
  assert code == 0, err[-3000:]
  assert 'converted 160 TF variables' in out
  config = read_config(out_dir)
  assert config.model.hidden_size == 64 and tuple(config.model.image_size) == (64, 96)
  # A fresh model (zeros), restored from the Orbax checkpoint.
  abstract = nnx.eval_shape(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0)))
  graphdef, state = nnx.split(abstract)
  model = nnx.merge(graphdef, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state))
  restore_params(out_dir, model)
  _assert_trees_equal(_params(model), tf_layout.to_ours(golden_vars, tf_layout.entries_for(config.model)))


def test_convert_script_fails_on_a_mismatched_config(ckpt_prefix, tmp_path):
  """The tiny config differs from reference A only by max_positions: the script must stop, naming the table,
  and write nothing. Run in-process (TensorFlow is already imported by the reading test)."""
  cfg = tmp_path / 'wrong.py'
  cfg.write_text('from merlot_jax.config import load_config\n'
                 f'def get_config():\n  c = load_config({str(REPO / "configs" / "tiny.py")!r})\n'
                 '  c.model.max_positions = 128\n  return c\n')
  with pytest.raises(ConversionError) as e:
    run_script('convert_tf_checkpoint.py', ckpt_prefix, tmp_path / 'out', '--config', cfg)
  assert 'position_embeddings/position_embeddings' in str(e.value) and '(256, 64)' in str(e.value)
  assert 'langonly_embeddings/position_embeddings' in str(e.value)
  assert not (tmp_path / 'out' / 'params').exists()
