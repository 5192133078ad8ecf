"""The MERLOT model: hybrid ViT per frame, a joint encoder over groups of segments, and a
language-only pass that shares the joint encoder's weights.

Layout conventions (as the original): an example is a video of N segments; frames are flattened
video-major (frame = b * N + c) and group g holds segments g*n ... g*n + n - 1 of that order, where
n = segments_per_group. Each frame gives 1 + pooled_h * pooled_w visual tokens (its first CLS state,
then the pooled patches); each segment gives `segment_length` tokens.
"""

from __future__ import annotations

import dataclasses

import chex
import einops
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from merlot_jax import sharding
from merlot_jax.config import model_sizes
from merlot_jax.models.heads import ContrastiveProjection, LMHead, TemporalHead
from merlot_jax.models.layers import LayerNorm, dropout, param, truncated_normal
from merlot_jax.models.transformer import TransformerSpec, TransformerStack
from merlot_jax.models.vit import HybridViT, PositionTable2D, VisionOutput
from merlot_jax.special_tokens import PAD


def segment_first_tokens(x: jax.Array, num_segments: int) -> jax.Array:
  """[g, n * c, hidden] -> [g, n, hidden]: the first token of each segment (START) or frame (CLS slot)."""
  return einops.rearrange(x, 'g (n c) d -> g n c d', n=num_segments)[:, :, 0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class JointOutput:
  """The joint encoder over groups: g = batch * N / n groups, P visual and L language tokens each."""

  visual_input: jax.Array  # [g, P, hidden] after image-index/2-D position embeddings and final_ln
  text_input: jax.Array  # [g, L, hidden] after word + position embeddings and embed_norm
  valid: jax.Array  # bool [g, P + L]: visual tokens always, language tokens where id != 0
  visual: jax.Array  # [g, P, hidden] final hidden states
  text: jax.Array  # [g, L, hidden]
  attention: jax.Array | None  # [g, layers, P + L, P + L] head-averaged probabilities


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LanguageOnlyOutput:
  hidden: jax.Array  # [batch, N * segment_length, hidden] (one sequence per video)
  segment_states: jax.Array  # [batch, N, hidden]: the first (start) token of every segment
  attention: jax.Array | None  # [batch, layers, T, T]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MerlotOutput:
  """What a notebook wants from a forward pass (per-segment representations and hidden states)."""

  frame_embedding: jax.Array  # [batch, N, hidden]: second CLS state of each frame
  transcript_embedding: jax.Array  # [batch, N, hidden]: language-only state of each segment's first token
  frame_projection: jax.Array  # [batch, N, contrastive]: L2-normalised, comparable with ...
  transcript_projection: jax.Array  # [batch, N, contrastive]
  joint: JointOutput
  language_only: LanguageOnlyOutput
  vision: VisionOutput


class MerlotModel(nnx.Module):
  """All of MERLOT's parameters and its forward passes. Build with `MerlotModel(config.model, rngs=...)`."""

  def __init__(self, m: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.config = m
    self.sizes = model_sizes(m)
    dtype = jnp.dtype(m.dtype)
    std, hidden = m.init_std, m.hidden_size
    self.vision = HybridViT(m, rngs=rngs, dtype=dtype)
    # Which frame of a group (or 16 + shuffled position) a visual token belongs to.
    self.image_index_embedding = param(rngs, truncated_normal(std), (m.max_image_positions, hidden), (None, 'embed'))
    # Extra 2-D positions for the pooled grid, which the average pool washed out.
    self.visual_positions = PositionTable2D(1, m.max_2d_positions, hidden, rngs=rngs, init_std=std)
    self.visual_norm = LayerNorm(hidden, rngs=rngs, dtype=dtype)
    self.word_embeddings = param(rngs, truncated_normal(std), (m.vocab_size, hidden), ('vocab', 'embed'))
    self.joint_positions = param(rngs, truncated_normal(std), (m.max_positions, hidden), (None, 'embed'))
    self.joint_embed_norm = LayerNorm(hidden, rngs=rngs, dtype=dtype)
    self.langonly_positions = param(rngs, truncated_normal(std), (m.max_positions, hidden), (None, 'embed'))
    self.langonly_embed_norm = LayerNorm(hidden, rngs=rngs, dtype=dtype)
    self.encoder = TransformerStack(TransformerSpec(
        m.num_joint_layers, hidden, m.num_heads, m.mlp_dim, m.dropout_rate, std, dtype, m.scan_layers,
        m.remat_policy, m.attention_impl), rngs=rngs)
    self.lm_head = LMHead(hidden, m.vocab_size, rngs=rngs, init_std=std, dtype=dtype)
    self.contrastive_text = ContrastiveProjection(hidden, m.contrastive_size, rngs=rngs, init_std=std, dtype=dtype)
    self.contrastive_frame = ContrastiveProjection(hidden, m.contrastive_size, rngs=rngs, init_std=std, dtype=dtype)
    self.temporal_text_frame = TemporalHead(hidden, rngs=rngs, init_std=std, dtype=dtype)
    self.temporal_frame_frame = TemporalHead(hidden, rngs=rngs, init_std=std, dtype=dtype)
    self.dtype = dtype

  # --- embeddings ---------------------------------------------------------------------------------

  def embed_text(self, ids: jax.Array, positions: jax.Array, norm: LayerNorm,
                 dropout_rng: jax.Array | None) -> jax.Array:
    """Word + position embeddings -> LayerNorm -> dropout. ids: [b, t] -> [b, t, hidden]."""
    t = ids.shape[1]
    if t > positions.shape[0]:
      raise ValueError(f'{t} tokens but only {positions.shape[0]} positions (config.model.max_positions)')
    x = jnp.take(self.word_embeddings[...], ids, axis=0) + positions[:t]
    return dropout(norm(x), self.config.dropout_rate, dropout_rng)

  def visual_position_embedding(self, image_index: jax.Array | None, num_groups: int) -> jax.Array:
    """[g, P, hidden]: each frame's image-index row on all its tokens plus the shared 2-D table.

    image_index: int [batch, N] rows of the image-index table (shuffled frames use 16 + position in
    the original); None uses 0..n-1 within each group (downstream use).
    """
    n, s = self.config.segments_per_group, self.sizes
    if image_index is None:
      image_index = jnp.tile(jnp.arange(n), (num_groups, 1))
    rows = jnp.take(self.image_index_embedding[...], image_index.reshape(num_groups, n), axis=0)
    per_frame = self.visual_positions(s.pooled_h, s.pooled_w)  # [tokens_per_frame, hidden]
    pe = rows[:, :, None, :] + per_frame[None, None]
    return einops.rearrange(pe, 'g n t d -> g (n t) d')

  def frame_tokens(self, vision: VisionOutput, image_index: jax.Array | None) -> jax.Array:
    """Visual tokens of the joint encoder: [CLS 0, pooled patches] per frame, grouped. -> [g, P, hidden]."""
    n = self.config.segments_per_group
    tokens = jnp.concatenate([vision.cls[:, :1], vision.pooled], axis=1)  # [frames, t, hidden]
    tokens = einops.rearrange(tokens, '(g n) t d -> g (n t) d', n=n)
    tokens = tokens.astype(jnp.float32) + self.visual_position_embedding(image_index, tokens.shape[0])
    return self.visual_norm(tokens)

  # --- passes -------------------------------------------------------------------------------------

  def encode_frames(self, images: jax.Array, *, dropout_rng: jax.Array | None = None) -> VisionOutput:
    """images: [batch, N, H, W, 3], uint8 or float in [0, 1] -> per-frame ViT outputs (frame = b*N + c)."""
    chex.assert_rank(images, 5)
    h, w = self.config.image_size
    chex.assert_shape(images, (None, self.config.num_segments, h, w, 3))
    if images.dtype == jnp.uint8:
      images = images.astype(jnp.float32) / 255.0
    frames = einops.rearrange(images, 'b n h w c -> (b n) h w c')
    frames = sharding.constrain(frames, ('batch', None, None, None))
    return self.vision(frames, dropout_rng=dropout_rng)

  def joint(self, vision: VisionOutput, input_ids: jax.Array, image_index: jax.Array | None = None, *,
            dropout_rng: jax.Array | None = None, return_attention: bool = False) -> JointOutput:
    """The joint encoder over groups of segments. input_ids: [batch, N, segment_length]."""
    m, s = self.config, self.sizes
    chex.assert_shape(input_ids, (None, m.num_segments, m.segment_length))
    rng_embed, rng_enc = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    visual = self.frame_tokens(vision, image_index)
    ids = einops.rearrange(input_ids, 'b (k n) t -> (b k) (n t)', n=m.segments_per_group)
    text = self.embed_text(ids, self.joint_positions[...], self.joint_embed_norm, rng_embed)
    valid = jnp.concatenate([jnp.ones(visual.shape[:2], bool), ids != PAD], axis=1)
    x = sharding.constrain(jnp.concatenate([visual, text.astype(visual.dtype)], axis=1), ('batch', 'seq', 'embed'))
    hidden, attention = self.encoder(x, valid, dropout_rng=rng_enc, return_probs=return_attention)
    return JointOutput(visual, text, valid, hidden[:, :s.visual_len], hidden[:, s.visual_len:], attention)

  def language_only(self, input_ids: jax.Array, *, dropout_rng: jax.Array | None = None,
                    return_attention: bool = False) -> LanguageOnlyOutput:
    """The transcript alone, one sequence per video, through the first num_langonly_layers joint layers."""
    m = self.config
    chex.assert_shape(input_ids, (None, m.num_segments, m.segment_length))
    rng_embed, rng_enc = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    ids = einops.rearrange(input_ids, 'b n t -> b (n t)')
    x = self.embed_text(ids, self.langonly_positions[...], self.langonly_embed_norm, rng_embed)
    hidden, attention = self.encoder(x, ids != PAD, num_layers=m.num_langonly_layers, dropout_rng=rng_enc,
                                     return_probs=return_attention)
    return LanguageOnlyOutput(hidden, segment_first_tokens(hidden, m.num_segments), attention)

  def temporal_logits(self, joint: JointOutput) -> dict[str, jax.Array]:
    """Pairwise order logits [g * n * n, 4] for transcript-frame and frame-frame pairs of each group."""
    n = self.config.segments_per_group
    h_text, h_frame = segment_first_tokens(joint.text, n), segment_first_tokens(joint.visual, n)
    return {'text_frame': self.temporal_text_frame(h_text, h_frame),
            'frame_frame': self.temporal_frame_frame(h_frame, h_frame)}

  def lm_logits(self, hidden: jax.Array) -> jax.Array:
    return self.lm_head(hidden, self.word_embeddings[...])

  def __call__(self, images: jax.Array, input_ids: jax.Array, image_index: jax.Array | None = None, *,
               return_attention: bool = False) -> MerlotOutput:
    """Evaluation forward: per-segment frame and transcript representations plus all hidden states.

    images: [batch, N, H, W, 3] (uint8, or float in [0, 1]); input_ids: int [batch, N, segment_length]
    with each segment starting with START (2); image_index: optional [batch, N] (None = in order).
    """
    b, n = input_ids.shape[:2]
    vision = self.encode_frames(images)
    joint = self.joint(vision, input_ids, image_index, return_attention=return_attention)
    lang = self.language_only(input_ids, return_attention=return_attention)
    frame = vision.cls[:, 1].reshape(b, n, -1).astype(jnp.float32)
    text = lang.segment_states.astype(jnp.float32)
    return MerlotOutput(frame, text, self.contrastive_frame(frame), self.contrastive_text(text), joint, lang, vision)


def build_model(config: ml_collections.ConfigDict, seed: int = 0) -> MerlotModel:
  """A freshly initialised MERLOT on the default device (see train/state.py for sharded creation)."""
  return MerlotModel(config.model, rngs=nnx.Rngs(params=seed))
