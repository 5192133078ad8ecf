"""Config files, installed as merlot_jax.configs: `merlot_jax.load_config(NAME)` loads configs/NAME.py."""
