"""merlot_jax: MERLOT (Zellers et al., NeurIPS 2021) in JAX / Flax NNX.

Notebook entry points:
  config = merlot_jax.load_config('configs/tiny.py')
  model = merlot_jax.build_model(config)
  out = model(images, input_ids)  # MerlotOutput: per-segment frame/transcript embeddings, hidden states
"""

from merlot_jax.config import default_config, load_config, validate
from merlot_jax.models.merlot import MerlotModel, MerlotOutput, build_model

__all__ = ['MerlotModel', 'MerlotOutput', 'build_model', 'default_config', 'load_config', 'validate']
