"""Analytic model FLOPs per example: the matmuls and convolutions of the paper model, by component.

The count behind MFU in the training log and the benchmarks; XLA's own cost analysis of the compiled step
(train/aot.py, train/bench.py) is the independent check.
"""

from __future__ import annotations

import ml_collections

from merlot_jax.config import model_sizes


def _transformer_flops(tokens: int, layers: int, hidden: int, mlp: int) -> float:
  """Forward matmul FLOPs of `layers` blocks over one sequence of `tokens` (2 per multiply-add):
  q/k/v/out projections, the MLP, and the two attention matmuls (scores, weighted values)."""
  per_token = 2 * (4 * hidden * hidden + 2 * hidden * mlp) + 2 * 2 * tokens * hidden
  return float(layers * tokens * per_token)


def _resnet_flops(m: ml_collections.ConfigDict) -> float:
  """Forward conv FLOPs of the lite ResNet for one frame (convs as in models/resnet.py)."""
  h, w = m.image_size
  width = m.resnet_width
  conv = lambda hw, k, cin, cout: 2.0 * hw * k * k * cin * cout
  hw = (h // 2) * (w // 2)  # the stride-2 first conv
  total = conv(hw, 3, 3, width // 2) + conv(hw, 3, width // 2, width // 2) + conv(hw, 3, width // 2, width)
  hw //= 4  # stem average pool
  cin = width
  for i, blocks in enumerate(m.resnet_blocks):
    f = width * 2**i
    for b in range(blocks):
      down = i > 0 and b == 0
      out_hw = hw // 4 if down else hw
      if b == 0:
        total += conv(out_hw, 1, cin, 4 * f)  # projection shortcut (after the pool when downsampling)
      total += conv(hw, 1, cin if b == 0 else 4 * f, f) + conv(hw, 3, f, f) + conv(out_hw, 1, f, 4 * f)
      hw = out_hw
    cin = 4 * f
  return total


def flops_breakdown(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Forward FLOPs per example (one video of num_segments frames and segments) by component."""
  m, s = config.model, model_sizes(config.model)
  d, n_frames = m.hidden_size, m.num_segments
  vit_tokens = m.num_cls_tokens + s.grid_h * s.grid_w
  vit = n_frames * (_transformer_flops(vit_tokens, m.num_vision_layers, d, m.mlp_dim)
                    + 2.0 * s.grid_h * s.grid_w * (16 * m.resnet_width) * d)  # post-ResNet 1x1 projection
  joint = s.groups_per_video * _transformer_flops(s.joint_len, m.num_joint_layers, d, m.mlp_dim)
  lang = _transformer_flops(s.video_text_len, m.num_langonly_layers, d, m.mlp_dim)
  masked = config.objectives.mask_rate * s.video_text_len
  lm_head = masked * 2.0 * d * m.vocab_size
  return {'vit': vit, 'joint': joint, 'resnet': n_frames * _resnet_flops(m), 'langonly': lang, 'lm_head': lm_head}


def model_flops_per_example(config: ml_collections.ConfigDict, *, train: bool = True) -> float:
  """Matmul/conv FLOPs per example; training counts 3x the forward (forward + 2x backward)."""
  forward = sum(flops_breakdown(config).values())
  return 3.0 * forward if train else forward
