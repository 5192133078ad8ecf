"""Frame decoding and augmentation in tf.data, as the original's resize_and_pad and its colour jitter.

Train time: a random scale in [random_scale_min, random_scale_max], a random crop offset and one of 4 resize
methods with align_corners, padding at the bottom/right, then with probability `augment_prob` a contrast or
brightness change (config.data.augment_mode, see `augment_affine`), rounded to uint8. Eval time: scaled to
fit, bilinear, no crop. The pretraining pipeline (pipeline.py) and the finetuning readers (tasks/) decode
frames here.

Everything that does not depend on pixels (crop geometry, augmentation factors) is computed for all frames
of an example at once: in tf.data each small op costs 10-20 us, a fair part of a frame's work. Images stay
uint8 until resizing; the augmentation and the rounding are one per-channel affine map on an [h, w * 3]
view (broadcasting over a last axis of 3 is several times slower in TF).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from merlot_jax.config import CHOICES
from merlot_jax.extras import import_extra

tf = import_extra('tensorflow', 'data')

# 'original': the released code always applies the contrast transform (its list of branch lambdas
# closes over the loop variable, so 'brightness,contrast' runs contrast twice over). 'intended': brightness
# or contrast with equal probability. Read from config.data.augment_mode (default 'original').
AUGMENT_MODES = CHOICES['data.augment_mode']
_AUGMENT_STRENGTH = 0.8 * 0.4  # the original's 0.8 * strength: factors in [1 - 0.32, 1 + 0.32]


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Per frame: scaled size, crop offset and crop size (int32 [n, 2], (y, x)), resize method [n]."""
  size: tf.Tensor
  offset: tf.Tensor
  crop: tf.Tensor
  method: tf.Tensor


def _min_scaled_side(out_size: tuple[int, int]) -> float:
  """The floor on the scaled short side: the original's 64 px (it keeps very wide images from shrinking to
  slivers at its 192x320 outputs), capped at the output's short side. Uncapped, an output under 64 px
  would only ever see a crop of part of each frame (a quarter of it at 32x48) in training, while
  evaluation shows the whole frame scaled to fit."""
  return float(min(64, min(out_size)))


def random_geometry(shapes: tf.Tensor, u: tf.Tensor, out_size: tuple[int, int],
                    scale_range: tuple[float, float]) -> Geometry:
  """The original's resize_and_pad(do_random_scale=True, resize_method='random'), for all frames.

  shapes: int32 [n, 2] source sizes; u: float [n, 4] uniforms (scale, offset y, offset x, method).
  Target scale s ~ U(scale_range) of (H, W); image scale = the smaller of the two axis ratios of the
  truncated target size to the source, at least `_min_scaled_side(out_size)` / short side; a random crop
  offset where the scaled image exceeds (H, W); one of 4 resize methods (bilinear, nearest, bicubic, area;
  align_corners).
  """
  hw = tf.cast(shapes, tf.float32)
  s = scale_range[0] + u[:, :1] * (scale_range[1] - scale_range[0])
  ratio = tf.cast(tf.cast(s * list(out_size), tf.int32), tf.float32) / hw
  scale = tf.maximum(tf.reduce_min(ratio, 1), _min_scaled_side(out_size) / tf.reduce_min(hw, 1))
  size = tf.cast(hw * scale[:, None], tf.int32)
  offset = tf.cast(tf.cast(tf.maximum(size - list(out_size), 0), tf.float32) * u[:, 1:3], tf.int32)
  return Geometry(size, offset, tf.minimum(size - offset, list(out_size)), tf.cast(u[:, 3] * 4, tf.int32))


def fit_geometry(shapes: tf.Tensor, out_size: tuple[int, int]) -> Geometry:
  """resize_and_pad without random scale: scale to fit, no crop, bilinear."""
  hw = tf.cast(shapes, tf.float32)
  size = tf.cast(hw * tf.reduce_min(tf.constant(out_size, tf.float32) / hw, 1, keepdims=True), tf.int32)
  return Geometry(size, tf.zeros_like(size), size, tf.zeros_like(size[:, 0]))


def augment_affine(u: tf.Tensor, prob: float, mode: str) -> tuple[tf.Tensor, tf.Tensor]:
  """(a, c) [n, 3] with x * a + mean * c = the original's lightweight_image_augment('brightness,contrast').

  u: [n, 5] uniforms (apply?, which transform, 3 factors). With probability `prob`, per-channel factors
  f ~ U(0.68, 1.32): contrast (x - mean) * f + mean (a = f, c = 1 - f; mean over the padded image), or
  brightness x * f (c = 0; see AUGMENT_MODES); otherwise the identity (a = 1, c = 0).
  """
  do = u[:, :1] < prob
  f = 1 - _AUGMENT_STRENGTH + 2 * _AUGMENT_STRENGTH * u[:, 2:5]
  contrast = do if mode == 'original' else do & (u[:, 1:2] >= 0.5)
  return tf.where(do, f, 1.0), tf.where(contrast, 1 - f, 0.0)


def _resize(image: tf.Tensor, size: tf.Tensor, method: int) -> tf.Tensor:
  """TF1 resize_images(align_corners=True), method in TF1 ResizeMethod order except nearest (gather)."""
  ops = {0: tf.raw_ops.ResizeBilinear, 2: tf.raw_ops.ResizeBicubic, 3: tf.raw_ops.ResizeArea}
  return ops[method](images=image[None], size=size, align_corners=True)[0]


def _nearest_window(image: tf.Tensor, size: tf.Tensor, offset: tf.Tensor, crop: tf.Tensor) -> tf.Tensor:
  """The crop of ResizeNearestNeighbor(align_corners=True) to `size`, by gathers, skipping the rest.

  Same source pixels as the TF kernel: round(y * (in - 1) / (out - 1)) in float32, clamped.
  """
  def index(axis):
    n_in = tf.shape(image)[axis]
    scale = tf.cast(n_in - 1, tf.float32) / tf.cast(size[axis] - 1, tf.float32)
    dst = tf.cast(tf.range(offset[axis], offset[axis] + crop[axis]), tf.float32)
    return tf.minimum(tf.cast(tf.floor(dst * scale + 0.5), tf.int32), n_in - 1)
  return tf.cast(tf.gather(tf.gather(image, index(0)), index(1), axis=1), tf.float32)


def _frame(jpeg: tf.Tensor, size: tf.Tensor, offset: tf.Tensor, crop: tf.Tensor, method: tf.Tensor,
           a: tf.Tensor, c: tf.Tensor, out_size: tuple[int, int], augment: bool) -> tf.Tensor:
  """JPEG -> uint8 [H, W, 3]: the crop of the resized image, augmented, rounded, padded bottom/right."""
  image = tf.io.decode_jpeg(jpeg, channels=3)

  def resized(m):
    full = tf.cast(_resize(image, size, m), tf.float32)
    return tf.slice(full, [offset[0], offset[1], 0], [crop[0], crop[1], 3])
  window = tf.switch_case(method, [lambda: resized(0), lambda: _nearest_window(image, size, offset, crop),
                                   lambda: resized(2), lambda: resized(3)])
  height, width = out_size
  b = tf.reduce_sum(window, [0, 1]) * (c / (height * width)) if augment else c
  b += 0.5  # saturate_cast truncates: this rounds
  flat = tf.reshape(window, [crop[0], crop[1] * 3])
  content = tf.saturate_cast(flat * tf.tile(a, crop[1:]) + tf.tile(b, crop[1:]), tf.uint8)
  fill = tf.saturate_cast(b, tf.uint8)  # the padding after augmentation (0 unless contrast < 1)
  right = tf.broadcast_to(fill, [crop[0], width - crop[1], 3])
  top = tf.concat([tf.reshape(content, [crop[0], crop[1], 3]), right], 1)
  return tf.concat([top, tf.broadcast_to(fill, [height - crop[0], width, 3])], 0)


FRAME_UNIFORMS = 9  # per frame: random_geometry's 4, then augment_affine's 5


def decode_frames(jpegs: tf.Tensor, u: tf.Tensor | None, data: ml_collections.ConfigDict,
                  out_size: tuple[int, int], augment_mode: str) -> tf.Tensor:
  """n JPEGs -> uint8 [n, H, W, 3]; u: [n, FRAME_UNIFORMS] at train time, None: deterministic fit."""
  shapes = tf.map_fn(lambda j: tf.io.extract_jpeg_shape(j)[:2], jpegs, fn_output_signature=tf.int32)
  augment = u is not None and data.augment_prob > 0
  if u is None:
    g = fit_geometry(shapes, out_size)
  else:
    g = random_geometry(shapes, u[:, :4], out_size, (data.random_scale_min, data.random_scale_max))
  if augment:
    a, c = augment_affine(u[:, 4:], data.augment_prob, augment_mode)
  else:
    a = tf.ones([tf.shape(jpegs)[0], 3])
    c = 0 * a
  return tf.map_fn(lambda x: _frame(*x, out_size, augment),
                   (jpegs, g.size, g.offset, g.crop, g.method, a, c),
                   fn_output_signature=tf.TensorSpec([*out_size, 3], tf.uint8))
