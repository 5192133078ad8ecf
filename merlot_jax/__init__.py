"""merlot_jax: MERLOT (Zellers et al., NeurIPS 2021) in JAX / Flax NNX.

Notebook entry points:
  config = merlot_jax.load_config('tiny')           # by name, from anywhere; or a config file's path
  model = merlot_jax.build_model(config)            # or: model, config = merlot_jax.load_pretrained(CKPT)
  out = model(images, input_ids)  # MerlotOutput: per-segment frame/transcript embeddings, hidden states
  features = merlot_jax.extract_features(model, config, tokenizer, 'clip.mp4')  # a whole video, per segment

The names are imported lazily, so data-only workers (`merlot_jax.data.*`) do not pay for JAX and Flax.
"""

import importlib

_EXPORTS = {
    'default_config': 'merlot_jax.config', 'load_config': 'merlot_jax.config', 'validate': 'merlot_jax.config',
    'MerlotModel': 'merlot_jax.models.merlot', 'MerlotOutput': 'merlot_jax.models.merlot',
    'build_model': 'merlot_jax.models.merlot',
    'load_pretrained': 'merlot_jax.pretrained',
    'extract_features': 'merlot_jax.tasks.features', 'VideoFeatures': 'merlot_jax.tasks.features',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f'module merlot_jax has no attribute {name!r}')
  return getattr(importlib.import_module(_EXPORTS[name]), name)
