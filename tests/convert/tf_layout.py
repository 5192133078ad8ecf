"""The original TF variable names <-> merlot_jax parameter paths, written for the tests from
tests/golden/tf_reference_A/README.md and merlot_base_variables.txt, independently of
merlot_jax.convert.tf_checkpoint (so a wrong converter entry is caught, not copied); and a writer of
checkpoints as the original's tf.train.Saver writes them (`save_tf_checkpoint`).

Layout transforms (README): per-layer variables `layerNN/...` are stacked on a leading axis; the 1x1
`conv_postresnet_proj` kernel [1, 1, in, out] becomes a dense [in, out] kernel; the 2-D position tables
`pos_embs` [1, side, side, H] and `cls_emb` [1, n, H] lose their leading singleton.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

RESNET = 'vision_backbone/vision_transformer/resnet50lite'
VIT = 'vision_backbone/vision_transformer'
BLOCK = [  # our path inside a transformer block -> TF name inside layerNN/
    (('attn_ln', 'scale'), 'LayerNorm_attn_ln0/gamma'), (('attn_ln', 'bias'), 'LayerNorm_attn_ln0/beta'),
    (('attn', 'query', 'kernel'), 'query_layer/kernel'), (('attn', 'query', 'bias'), 'query_layer/bias'),
    (('attn', 'key', 'kernel'), 'key_layer/kernel'), (('attn', 'key', 'bias'), 'key_layer/bias'),
    (('attn', 'value', 'kernel'), 'value_layer/kernel'), (('attn', 'value', 'bias'), 'value_layer/bias'),
    (('attn', 'out', 'kernel'), 'context_projection_layer/kernel'),
    (('attn', 'out', 'bias'), 'context_projection_layer/bias'),
    (('mlp_ln', 'scale'), 'LayerNorm_mlp_ln0/gamma'), (('mlp_ln', 'bias'), 'LayerNorm_mlp_ln0/beta'),
    (('mlp', 'intermediate', 'kernel'), 'intermediate/kernel'),
    (('mlp', 'intermediate', 'bias'), 'intermediate/bias'),
    (('mlp', 'output', 'kernel'), 'output/kernel'), (('mlp', 'output', 'bias'), 'output/bias'),
]


def entries(resnet_blocks, num_vision_layers, num_joint_layers):
  """[(our path, TF name or tuple of per-layer names, kind)], kind in id | stack | drop1 | drop2."""
  out = []
  dense = lambda path, tf: out.extend([(path + ('kernel',), f'{tf}/kernel', 'id'),
                                       (path + ('bias',), f'{tf}/bias', 'id')])
  norm = lambda path, tf: out.extend([(path + ('scale',), f'{tf}/gamma', 'id'), (path + ('bias',), f'{tf}/beta', 'id')])

  def stack(path, scope, n):
    for ours, theirs in BLOCK:
      out.append((path + ('layers',) + ours, tuple(f'{scope}/layer{i:02d}/{theirs}' for i in range(n)), 'stack'))
    norm(path + ('final_ln',), f'{scope}/LayerNorm_ln_final')

  conv = lambda path, k, scope: out.append(
      (path + ('conv', 'kernel'), f'{scope}/conv2d' + (f'_{k}' if k else '') + '/kernel', 'id'))
  gn = lambda path, k, scope: norm(path + ('norm',), f'{scope}/GroupNorm' + (f'_{k}' if k else ''))
  for i in range(3):
    path = ('vision', 'resnet', 'stem', i)
    conv(path, i, f'{RESNET}/stem')
    norm(path + ('norm',), f'{RESNET}/stem/GroupNorm_stem{i}')
  for g, blocks in enumerate(resnet_blocks):
    scope = f'{RESNET}/block_group{g + 1}'
    for b in range(blocks):
      path = ('vision', 'resnet', 'stages', g, b)
      if b == 0:  # conv2d / GroupNorm: the projection shortcut of the first block
        conv(path + ('proj',), 0, scope)
        gn(path + ('proj',), 0, scope)
      for j in (1, 2, 3):  # conv2d_{3b+j}: creation order, one scope for all blocks of the group
        conv(path + (f'conv{j}',), 3 * b + j, scope)
        gn(path + (f'conv{j}',), 3 * b + j, scope)
  out.append((('vision', 'proj', 'kernel'), f'{VIT}/conv_postresnet_proj/kernel', 'drop2'))
  out.append((('vision', 'proj', 'bias'), f'{VIT}/conv_postresnet_proj/bias', 'id'))
  out.append((('vision', 'pos', 'grid'), f'{VIT}/pos_embs/pos_embs', 'drop1'))
  out.append((('vision', 'pos', 'cls'), f'{VIT}/pos_embs/cls_emb', 'drop1'))
  norm(('vision', 'pre_ln'), f'{VIT}/LayerNorm_ctx_patches_pre_ln')
  stack(('vision', 'transformer'), VIT, num_vision_layers)
  out.append((('image_index_embedding',), 'vision_backbone/img_idx_pe', 'id'))
  out.append((('visual_positions', 'grid'), 'vision_backbone/final_pe/pos_embs', 'drop1'))
  out.append((('visual_positions', 'cls'), 'vision_backbone/final_pe/cls_emb', 'drop1'))
  norm(('visual_norm',), 'vision_backbone/LayerNorm_final_ln')
  out.append((('word_embeddings',), 'word_embeddings/word_embeddings', 'id'))
  out.append((('joint_positions',), 'position_embeddings/position_embeddings', 'id'))
  norm(('joint_embed_norm',), 'position_embeddings/LayerNorm_embed_norm')
  out.append((('langonly_positions',), 'langonly_embeddings/position_embeddings', 'id'))
  norm(('langonly_embed_norm',), 'langonly_embeddings/LayerNorm_embed_norm')
  stack(('encoder',), 'encoder', num_joint_layers)
  dense(('lm_head', 'projection'), 'lm_head/projection')
  norm(('lm_head', 'norm'), 'lm_head/LayerNorm')
  out.append((('lm_head', 'output_bias'), 'lm_head/output_bias', 'id'))
  for ours, theirs in (('contrastive_text', 'lang_proj'), ('contrastive_frame', 'viz_proj')):
    dense((ours, 'intermediate'), f'contrastive/{theirs}_intermediate')
    norm((ours, 'norm'), f'contrastive/LayerNorm_{theirs}_ln')
    dense((ours, 'out'), f'contrastive/{theirs}')
  for ours, theirs in (('temporal_text_frame', 'lang_viz_temporal'), ('temporal_frame_frame', 'viz_viz_temporal')):
    dense((ours, 'intermediate'), f'{theirs}/intermediate')
    norm((ours, 'norm'), f'{theirs}/LayerNorm_ln0')
    dense((ours, 'logits'), f'{theirs}/logits')
  return out


def entries_for(model_config):
  m = model_config
  return entries(tuple(m.resnet_blocks), m.num_vision_layers, m.num_joint_layers)


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def to_ours(tf_vars, layout) -> dict:
  """TF variables -> our nested pure dict."""
  out = {}
  for path, names, kind in layout:
    if kind == 'stack':
      value = np.stack([tf_vars[n] for n in names])
    elif kind == 'drop1':
      value = np.asarray(tf_vars[names])[0]
    elif kind == 'drop2':
      value = np.asarray(tf_vars[names])[0, 0]
    else:
      value = np.asarray(tf_vars[names])
    _set(out, path, value)
  return out


def to_tf(params, layout) -> dict[str, np.ndarray]:
  """Our nested pure dict -> TF variables (the inverse of to_ours)."""
  out = {}
  for path, names, kind in layout:
    value = np.asarray(_get(params, path), np.float32)
    if kind == 'stack':
      out.update({n: value[i] for i, n in enumerate(names)})
    else:
      out[names] = {'id': value, 'drop1': value[None], 'drop2': value[None, None]}[kind]
  return out


def tf_names(layout) -> list[str]:
  return [n for _, names, kind in layout for n in (names if kind == 'stack' else (names,))]


def save_tf_checkpoint(prefix: str | os.PathLike, variables: Mapping[str, np.ndarray]) -> None:
  """Writes `variables` as the original's training does: a TF1 graph with one tf.Variable per name, in the
  array's dtype (bfloat16 for the slots of its `use_bfloat16_adam` AdamOptimizer: get_variable(NAME/adam_m,
  dtype=tf.bfloat16)), global_step from get_or_create_global_step, saved by tf.compat.v1.train.Saver."""
  import tensorflow as tf  # the 'data' extra: imported only where a checkpoint is written

  v1 = tf.compat.v1
  with tf.Graph().as_default():
    feeds, assigns = {}, []
    for name, value in variables.items():
      value = np.asarray(value)
      if name == 'global_step':
        var = v1.train.get_or_create_global_step()
      else:
        var = v1.get_variable(name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
                              initializer=v1.zeros_initializer(), use_resource=False)
      holder = v1.placeholder(var.dtype.base_dtype, shape=value.shape)
      assigns.append(var.assign(holder))
      feeds[holder] = value
    saver = v1.train.Saver()
    with v1.Session() as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(assigns, feed_dict=feeds)
      saver.save(sess, os.fspath(prefix), write_meta_graph=False, write_state=False)
