"""TF checkpoint -> merlot_jax: reading the golden tf.train.Saver checkpoint, a training checkpoint whose
bfloat16 Adam slots are never read, bfloat16 model variables, the variable map against the paper model's 597
variables, conversion errors, and the conversion / parameter-count scripts."""

import dataclasses
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
from merlot_jax.convert.tf_checkpoint import (
  ConversionError,
  ConversionSummary,
  VariableReader,
  convert_variables,
  open_tf_checkpoint,
  tf_variable_map,
)
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
def adam_ckpt(golden_vars, tmp_path_factory):
  """The golden variables as a training checkpoint of the original with `use_bfloat16_adam`: every variable's
  adam_m and adam_v slots as bfloat16 tf.Variables (random values), and global_step."""
  rng = np.random.default_rng(0)
  variables = dict(golden_vars)
  for name, value in golden_vars.items():
    for slot in ('adam_m', 'adam_v'):
      variables[f'{name}/{slot}'] = rng.standard_normal(value.shape).astype(jnp.bfloat16)
  variables['global_step'] = np.asarray(460000, np.int64)
  prefix = tmp_path_factory.mktemp('adam_ckpt') / 'model.ckpt-460000'
  tf_layout.save_tf_checkpoint(prefix, variables)
  return prefix


@pytest.fixture(scope='module')
def reference_config_file(golden_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp('cfg') / 'reference_a.py'
  path.write_text('import json\n'
                  'from merlot_jax.convert.parity import config_from_reference\n\n\n'
                  'def get_config():\n'
                  f'  return config_from_reference(json.load(open({str(golden_dir / "config.json")!r})))\n')
  return path


@pytest.fixture(scope='module')
def scripts_running(adam_ckpt, reference_config_file, tmp_path_factory):
  """Start the two command-line runs at once (they overlap with the in-process tests on 2 cores)."""
  out_dir = tmp_path_factory.mktemp('converted') / 'params_a'
  return {'convert': (_script('convert_tf_checkpoint.py', adam_ckpt, out_dir, '--config', reference_config_file),
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


def test_open_tf_checkpoint_indexes_and_reads_the_variables_npz(ckpt_prefix, golden_vars, scripts_running):
  reader = open_tf_checkpoint(ckpt_prefix)
  assert set(reader.shapes) == set(reader.dtypes) == set(golden_vars)
  assert len(reader.shapes) == 160  # README: 160 variables, 2,890,408 parameters
  assert sum(int(np.prod(s)) for s in reader.shapes.values()) == 2_890_408
  for name, value in golden_vars.items():
    assert reader.shapes[name] == value.shape and reader.dtypes[name] == 'float32', name
    got = reader.read(name)
    assert got.dtype == np.float32, name
    np.testing.assert_array_equal(got, value, err_msg=name)


def test_open_tf_checkpoint_bad_prefix(tmp_path):
  with pytest.raises(ConversionError, match=re.escape(str(tmp_path / 'nothing'))):
    open_tf_checkpoint(tmp_path / 'nothing')


def test_training_checkpoint_reads_each_model_variable_once_and_no_slot(adam_ckpt, golden_vars):
  """rowanz/merlot#10: a checkpoint with bfloat16 Adam moments loads into float32 parameters; the slots and
  global_step stay unread (the wrapped reader raises on them)."""
  reader = open_tf_checkpoint(adam_ckpt)
  slot = 'encoder/layer00/output/kernel/adam_m'
  assert reader.dtypes[slot] == 'bfloat16' and reader.read(slot).dtype == jnp.bfloat16  # as the original wrote it
  reads = []

  def read(name):
    if name.endswith(('/adam_m', '/adam_v')) or name == 'global_step':
      raise AssertionError(f'the converter read {name}')
    reads.append(name)
    return reader.read(name)

  model = _tiny_abstract()
  summary = convert_variables(dataclasses.replace(reader, read=read), model)
  assert sorted(reads) == sorted(golden_vars)  # every model variable, once
  _assert_trees_equal(_params(model), tf_layout.to_ours(golden_vars, tf_layout.entries_for(model.config)))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(_params(model)))
  assert summary == ConversionSummary(converted=160, parameters=2_890_408, cast={},
                                      slots={'adam_m': 160, 'adam_v': 160}, slot_values=2 * 2_890_408,
                                      step_counter=('global_step',))
  assert str(summary) == ('converted 160 TF variables: 2,890,408 parameters\n'
                          'skipped 320 optimizer slots, never read: adam_m 160, adam_v 160 (5,780,816 values)\n'
                          'skipped the step counter: global_step')


def test_bfloat16_model_variables_load_as_float32(golden_vars, tmp_path):
  """A checkpoint whose model variables are bfloat16 tf.Variables: the parameters are their values cast."""
  stored = {name: value.astype(jnp.bfloat16) for name, value in golden_vars.items()}
  tf_layout.save_tf_checkpoint(tmp_path / 'model.ckpt', stored)
  reader = open_tf_checkpoint(tmp_path / 'model.ckpt')
  assert reader.read('lm_head/output_bias').dtype == jnp.bfloat16  # TF hands back an ml_dtypes bfloat16 array
  model = _tiny_abstract()
  summary = convert_variables(reader, model)
  cast = {name: value.astype(np.float32) for name, value in stored.items()}
  _assert_trees_equal(_params(model), tf_layout.to_ours(cast, tf_layout.entries_for(model.config)))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(_params(model)))
  assert summary.cast == {'bfloat16': 160} and summary.converted == 160 and not summary.slots
  assert str(summary) == 'converted 160 TF variables: 2,890,408 parameters (160 cast from bfloat16 to float32)'


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
  summary = convert_variables(tf_vars, model)
  _assert_trees_equal(_params(model), tf_layout.to_ours(golden_vars, tf_layout.entries_for(model.config)))
  assert (summary.converted, summary.slots, summary.step_counter) == (160, {'adam_m': 5, 'adam_v': 5},
                                                                      ('global_step',))


def test_float16_variables_in_memory_are_cast(golden_vars):
  stored = {name: value.astype(np.float16) for name, value in golden_vars.items()}
  model = _tiny_abstract()
  assert convert_variables(stored, model).cast == {'float16': 160}
  cast = {name: value.astype(np.float32) for name, value in stored.items()}
  _assert_trees_equal(_params(model), tf_layout.to_ours(cast, tf_layout.entries_for(model.config)))


def test_non_float_and_unknown_variables_fail_before_anything_is_read(golden_vars):
  """A model variable stored as integers, and an unknown variable next to slots: both named, nothing read."""
  tf_vars = dict(golden_vars, **{'lm_head/output_bias': np.zeros(512, np.int32), 'vcr_head/kernel': np.zeros(3),
                                 'vcr_head/kernel/adam_m': np.zeros(3), 'global_step': np.asarray(7)})
  source = VariableReader.from_arrays(tf_vars)
  reader = dataclasses.replace(source, read=lambda name: pytest.fail(f'read {name}'))
  with pytest.raises(ConversionError) as e:
    convert_variables(reader, _tiny_abstract())
  message = str(e.value)
  assert 'lm_head/output_bias (int32)' in message and 'not floating point' in message, message
  assert "unknown to this config: ['vcr_head/kernel']" in message, message


def test_a_reader_that_disagrees_with_its_index_is_caught(golden_vars):
  source = VariableReader.from_arrays(golden_vars)
  wrong = dataclasses.replace(source, read=lambda name: np.zeros(1, np.float32))  # would broadcast silently
  model = _tiny_abstract()
  with pytest.raises(ConversionError, match='read with shape'):
    convert_variables(wrong, model)
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(_params(model)))


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
  assert out.strip().splitlines()[-4:] == [
      'converted 160 TF variables: 2,890,408 parameters',
      'skipped 320 optimizer slots, never read: adam_m 160, adam_v 160 (5,780,816 values)',
      'skipped the step counter: global_step', f'wrote {out_dir}'], out
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


def test_convert_script_keeps_the_configs_compute_dtype(ckpt_prefix, reference_config_file, golden_vars, tmp_path,
                                                        capsys):
  """The saved config is what finetuning builds: --config.model.dtype=bfloat16 stays (parameters are float32)."""
  out_dir = tmp_path / 'params_bf16'
  assert run_script('convert_tf_checkpoint.py', ckpt_prefix, out_dir, '--config', reference_config_file,
                    '--config.model.dtype=bfloat16') == 0
  assert capsys.readouterr().out.splitlines()[0] == 'converted 160 TF variables: 2,890,408 parameters'
  config = read_config(out_dir)
  assert config.model.dtype == 'bfloat16'
  abstract = nnx.eval_shape(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0)))
  graphdef, state = nnx.split(abstract)
  model = nnx.merge(graphdef, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state))
  restore_params(out_dir, model)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(_params(model)))
  _assert_trees_equal(_params(model), tf_layout.to_ours(golden_vars, tf_layout.entries_for(config.model)))
