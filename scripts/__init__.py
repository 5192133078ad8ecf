"""The command-line scripts, installed as merlot_jax.scripts with console entry points (pyproject.toml)."""
