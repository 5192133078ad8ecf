"""The paper's MERLOT (model/configs/merlot.yaml): 235,534,634 parameters, TPU v3-1024, batch 1024."""

from merlot_jax.config import default_config


def get_config():
  c = default_config()
  c.model.dtype = 'bfloat16'
  return c
