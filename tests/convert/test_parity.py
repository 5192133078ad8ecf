"""scripts/check_tf_parity.py: passes on the golden TF reference A (subprocess), and its machinery (config
translation, TF names, shapes, exit codes) on a second, differently shaped reference folder."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from merlot_jax.convert import parity
from merlot_jax.models.merlot import MerlotModel
from tests.convert import tf_layout
from tests.models.testlib import REPO, fill_module
from tests.script_runner import run_script

SCRIPT = REPO / 'scripts' / 'check_tf_parity.py'
LAST_LINE = re.compile(r'^max relative error: ([0-9.eE+-]+|nan|inf)\b')


@pytest.fixture(scope='module', autouse=True)
def golden_run(golden_dir):
  """The golden check runs as a subprocess, started first so it overlaps with the in-process tests."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  proc = subprocess.Popen([sys.executable, str(SCRIPT), str(golden_dir)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  yield proc
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


# --- a second reference folder -------------------------------------------------------------------------

# The original's `model:` keys for a config unlike reference A: 3 segments per group, 32 x 64 frames,
# 2 resnet blocks in group 2, hidden 32 with 2 heads, 1 vision layer, 2 joint layers of which the
# language-only pass uses 1, smaller tables.
OTHER_CONFIG = {
    'num_chunks': 6, 'chunk_text_len': 6, 'num_chunks_in_group': 3, 'image_size': [32, 64], 'patch_size': 16,
    'spatial_pool_size': 2, 'resnet_layers': [1, 2, 1], 'hidden_size': 32, 'num_attention_heads': 2,
    'intermediate_size': 48, 'num_vision_transformer_hidden_layers': 1, 'num_hidden_layers': 2,
    'num_lang_transformer_hidden_layers': 1, 'vocab_size': 300, 'max_position_embeddings': 64,
    'contrastive_size': 16, 'initializer_range': 0.02, 'hidden_dropout_prob': 0.1, 'batch_size': 2,
    'share_params': True, 'do_projection': True, 'do_bias': True, 'use_bfloat16': False,
    'masking_rate': 0.2, 'contrast_temp': 0.05, 'contrast_coef': 0.25, 'image_shuffle_prob': 0.4,
    '_implicit_defaults_read_by_original_code': {
        'num_cls_emb': 2, 'max_vision_pos_embeddings': 32, 'temporal_coef': 1.0, 'num_imgs': 1, 'num_texts': 1,
        'disable_pairwise_lang_attn': False,
        'hardcoded': {'resnet_width': 64, 'position_embedder2d_max_hw': 8},
    },
}
BS, NC, CL, NCG = 2, 6, 6, 3
GROUPS, L = BS * NC // NCG, NCG * CL


def _inputs(rng):
  images = (rng.randint(0, 256, (BS * NC, 32, 64, 3)) / 255).astype(np.float32)
  ids = rng.randint(100, 300, (BS, NC, CL)).astype(np.int32)
  ids[:, :, 0] = 2  # START
  ids[0, 1, 3:] = 0
  ids[1, 4, 1:] = 0  # a segment with only START
  ids[1, 5, 5:] = 0
  shuffled = np.array([0, 1, 2, 18, 16, 17, 0, 1, 2, 17, 18, 16], np.int32)
  video = np.array([[0] * 6, [0, 0, 0, 0, 1, 1]], np.int32)
  return {'images': images, 'input_ids': ids, 'shuffled_idx_img': shuffled, 'video_src_ids': video}


def _draws(ids, rng):
  idx = np.sort(np.stack([rng.choice(np.flatnonzero(ids.reshape(GROUPS, L)[g]), 3, replace=False)
                          for g in range(GROUPS)]), axis=1).astype(np.int32)
  masked = ids.reshape(GROUPS, L).copy()
  np.put_along_axis(masked, idx, 1, axis=1)  # MASK
  return {'train/masked_ids': masked.reshape(ids.shape), 'train/masked_idx': idx}


@pytest.fixture(scope='module')
def other_reference(tmp_path_factory):
  """A reference folder in the golden format for OTHER_CONFIG.

  variables.npz: a randomly initialised merlot_jax model written under the original TF names by
  tests/convert/tf_layout.py (independent of the converter under test).
  outputs.npz: produced by merlot_jax itself (parity.model_outputs on that model). That is NOT a check of the
  model's math (golden reference A is); it only tests the script's machinery on a different shape: config
  translation, TF names and layout transforms, shapes, key handling and exit codes.
  """
  folder = tmp_path_factory.mktemp('reference_other')
  config = parity.config_from_reference(OTHER_CONFIG)
  model = fill_module(nnx.eval_shape(lambda: MerlotModel(config.model, rngs=nnx.Rngs(params=0))), seed=21)
  variables = tf_layout.to_tf(nnx.state(model, nnx.Param).to_pure_dict(), tf_layout.entries_for(config.model))
  rng = np.random.RandomState(4)
  inputs = _inputs(rng)
  draws = _draws(inputs['input_ids'], rng)
  outputs = {**parity.model_outputs(model, config.objectives, inputs, draws), **draws}
  (folder / 'config.json').write_text(json.dumps(OTHER_CONFIG))
  np.savez(folder / 'variables.npz', **variables)
  np.savez(folder / 'inputs.npz', **inputs)
  np.savez(folder / 'outputs.npz', **outputs)
  return folder, outputs


def _run_in_process(folder, capsys, *extra):
  """Runs the script as __main__ in this process (compiled ops are shared between runs)."""
  code = run_script(SCRIPT.name, folder, *extra)
  return code, capsys.readouterr().out


def _rewrite(src, dst, **changes):
  """Copy of a reference folder with outputs.npz changed: key -> array, or key -> None to drop it."""
  dst.mkdir()
  for name in ('config.json', 'variables.npz', 'inputs.npz'):
    (dst / name).write_bytes((src / name).read_bytes())
  outputs = dict(np.load(src / 'outputs.npz'))
  for key, value in changes.items():
    key = key.replace('__', '/')
    if value is None:
      outputs.pop(key)
    else:
      outputs[key] = value
  np.savez(dst / 'outputs.npz', **outputs)
  return dst


def test_config_translation_of_the_other_reference():
  m = parity.config_from_reference(OTHER_CONFIG).model
  assert (m.num_segments, m.segment_length, m.segments_per_group) == (6, 6, 3)
  assert tuple(m.image_size) == (32, 64) and tuple(m.resnet_blocks) == (1, 2, 1)
  assert (m.hidden_size, m.num_heads, m.mlp_dim) == (32, 2, 48)
  assert (m.num_vision_layers, m.num_joint_layers, m.num_langonly_layers) == (1, 2, 1)
  assert (m.vocab_size, m.max_positions, m.contrastive_size) == (300, 64, 16)
  assert (m.max_image_positions, m.max_2d_positions, m.num_cls_tokens) == (32, 8, 2)
  assert m.dtype == 'float32'


def test_config_translation_of_reference_a_is_the_tiny_config(golden_dir):
  from merlot_jax.config import load_config  # noqa: PLC0415
  ours = parity.config_from_reference(json.loads((golden_dir / 'config.json').read_text())).model
  tiny = load_config(REPO / 'configs' / 'tiny.py').model
  for key in ('num_segments', 'segment_length', 'segments_per_group', 'image_size', 'resnet_blocks', 'hidden_size',
              'num_heads', 'mlp_dim', 'num_vision_layers', 'num_joint_layers', 'num_langonly_layers', 'vocab_size',
              'max_positions', 'contrastive_size', 'max_image_positions', 'max_2d_positions', 'resnet_width'):
    assert ours[key] == tiny[key], key


def test_config_translation_rejects_unsupported_settings():
  with pytest.raises(ValueError, match='share_params'):
    parity.config_from_reference({**OTHER_CONFIG, 'share_params': False})
  with pytest.raises(ValueError, match='num_hidden_layers'):
    parity.config_from_reference({k: v for k, v in OTHER_CONFIG.items() if k != 'num_hidden_layers'})


def test_script_passes_on_the_other_reference(other_reference, capsys):
  folder, outputs = other_reference
  code, out = _run_in_process(folder, capsys)
  lines = out.strip().splitlines()
  match = LAST_LINE.match(lines[-1])
  assert match, lines[-1]
  assert code == 0, out[-3000:]
  assert float(match.group(1)) < 1e-4
  assert 'PROBLEM' not in out
  for key in outputs:  # every key is reported
    assert re.search(rf'^{re.escape(key)}\s', out, re.M), key


def test_script_fails_when_one_output_is_off_by_1e2(other_reference, capsys, tmp_path):
  folder, outputs = other_reference
  hidden = outputs['encoder_hidden_lang'].copy()
  hidden[1, 3, 5] += 1e-2
  bad = _rewrite(folder, tmp_path / 'perturbed', encoder_hidden_lang=hidden)
  code, out = _run_in_process(bad, capsys)
  assert code == 1, out[-3000:]
  match = LAST_LINE.match(out.strip().splitlines()[-1])
  assert match and float(match.group(1)) > 1e-4
  assert 'encoder_hidden_lang' in out.strip().splitlines()[-1]
  # A looser tolerance accepts it.
  code, _ = _run_in_process(bad, capsys, '--tolerance', '1e-2')
  assert code == 0


def test_script_fails_on_a_key_it_does_not_produce(other_reference, capsys, tmp_path):
  folder, outputs = other_reference
  bad = _rewrite(folder, tmp_path / 'renamed', lm_logits=None, lm_logits_after_softmax=outputs['lm_logits'])
  code, out = _run_in_process(bad, capsys)
  assert code == 1, out[-3000:]
  assert re.search(r'PROBLEM: lm_logits_after_softmax: not produced', out)
  assert LAST_LINE.match(out.strip().splitlines()[-1])


def test_script_fails_on_a_wrong_integer_label_and_an_inconsistent_draw(other_reference, capsys, tmp_path):
  folder, outputs = other_reference
  labels = outputs['temporal_labels'].copy()
  labels[0] = (labels[0] + 1) % 4
  masked = outputs['train/masked_ids'].copy()
  idx = outputs['train/masked_idx']
  keep = np.ones((GROUPS, L), bool)
  np.put_along_axis(keep, idx, False, axis=1)
  g, t = np.argwhere(keep)[0]
  masked.reshape(GROUPS, L)[g, t] = 150 if masked.reshape(GROUPS, L)[g, t] != 150 else 151
  bad = _rewrite(folder, tmp_path / 'labels', temporal_labels=labels, train__masked_ids=masked)
  code, out = _run_in_process(bad, capsys)
  assert code == 1
  assert re.search(r'^temporal_labels\s+1\.000e\+00', out, re.M), out
  assert 'PROBLEM: train/masked_ids differs from input_ids outside train/masked_idx' in out


def test_script_needs_every_file(other_reference, tmp_path, capsys):
  folder, _ = other_reference
  partial = tmp_path / 'partial'
  partial.mkdir()
  (partial / 'config.json').write_bytes((folder / 'config.json').read_bytes())
  with pytest.raises(FileNotFoundError, match='variables.npz'):
    _run_in_process(partial, capsys)


def test_golden_reference_a_passes(golden_run, golden_dir):
  out, err = golden_run.communicate(timeout=600)
  assert golden_run.returncode == 0, (out[-3000:], err[-3000:])
  last = out.strip().splitlines()[-1]
  match = LAST_LINE.match(last)
  assert match, last
  assert float(match.group(1)) < 1e-4
  assert 'PROBLEM' not in out
  golden_keys = set(np.load(golden_dir / 'outputs.npz').files)
  for key in golden_keys - set(parity.DRAW_KEYS):  # every key is compared, none skipped
    assert re.search(rf'^{re.escape(key)}\s+\d', out, re.M), key
